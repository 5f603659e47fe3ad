"""Implicit Diffusion Q-Learning (IDQL), offline, on Minari datasets.

Paper: "IDQL: Implicit Q-Learning as an Actor-Critic Method with Diffusion Policies", Philippe Hansen-Estruch,
Ilya Kostrikov, Michael Janner, Jakub Grudzien Kuba, Sergey Levine, arXiv:2304.10573. Reference code: the authors'
JAX implementation (philippe-eecs/IDQL, jaxrl5/agents/ddpm_iql): IQL's V and twin Q trained apart from the actor
(the V loss may be an expectile, a quantile or an exponential), a DDPM behaviour policy over actions with an LN-ResNet
score network (T = 5, variance-preserving schedule, EMA 0.001, cosine-decayed learning rate), and at evaluation
N behaviour samples per state scored by the target twin-Q minimum, keeping the argmax (or resampling, Algorithm 2).

Deviations from the reference:
- Data comes from Minari, not D4RL (retired). AntMaze and PointMaze datasets are relabelled against the eval goal,
  as D4RL's were (reward = terminal = 1 within 0.5 of the goal cell's centre; `--no-relabel` keeps Minari's own).
- Maze scoring: D4RL ended an AntMaze episode with success within 0.5 of a goal offset from the goal cell's centre
  by 0 to 0.375 x maze scale per axis (drawn once per env in v0/v1, per episode in v2). Here an episode ends with
  success within 0.5 of the goal cell's centre, the goal the data is relabelled to; not within 0.45 of Gymnasium-
  Robotics' goal, which moves by up to ±0.25 x maze scale per axis at every reset (±1.0 on AntMaze). With
  `--no-relabel`, Minari's own goal and success are used. Score = 100 x success rate. AntMaze umaze is evaluated on
  the data env's own map (Minari's eval env has a mirrored one).
- V and twin Q are iql.py's (orthogonal init, Q loss summed over the two heads); the reference uses Flax's default
  init and averages the heads (Adam makes the factor 2 immaterial).
- Critic and actor draw their own batches (256 and 1024); the reference slices the critic's from the actor's.
- Time embedding: 128 learnable Fourier features -> MLP(256, 256) with swish, as SPEC.md describes the authors'
  current code (the published code: 64 features -> MLP(128, 128), mish). The LN-ResNet uses mish, as published.
- Exponential (linex) loss: f(u) = (exp(a u) - a u - 1) / a with the exponent continued linearly above `--exp-clip`
  (a convex loss whose gradient is the reference's stop-gradient surrogate); its resampling weights (Eq. 12) are
  computed in log space. The quantile weights (Eq. 10) floor |Q - V| at 1e-6.
- Maze2D (PointMaze) is only in the paper's appendix F.2 (Table 5), as D4RL's normalised return of non-terminating
  episodes, with no settings given: here it takes AntMaze's and is scored as a goal-reaching success rate, so those
  figures are not comparable. Kitchen and offline Adroit are not in the paper: they take locomotion's settings.
  Dense PointMaze datasets (`*-dense-v2`) get D4RL's dense reward exp(−distance) instead of the 0/1 success.
- Actions are mapped from the action space's [low, high] to [−1, 1] (the reference assumes D4RL's [−1, 1]; some
  Minari `mujoco/*` envs differ) and back at evaluation.
- Locomotion reward scaling (r · 1000 / (max − min episode return)) applies to every `mujoco/*` dataset whose episode
  returns differ (the reference scales D4RL's locomotion datasets).
- Every evaluation of a run uses the same seeded start states (seed + 100000 + episode), not one continuing stream.
- Evaluation draws its noise from its own generator (seeded apart from training), so evaluating never changes training.

Equation numbers are the IDQL paper's: its Eqs. (1) and (2), IQL's V and Q losses, are Eqs. (5) and (6) of the IQL paper.
"""

import copy
import csv
import difflib
import functools
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = "idql"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (data sampling, network init, dropout); evaluation uses seed + 100000 onwards"""
    torch_deterministic: bool = True
    """make CUDA runs repeatable (deterministic cuDNN/cuBLAS kernels, a little slower); CPU runs are repeatable anyway"""
    cuda: bool = True
    """train on CUDA when it is available"""
    env_id: Optional[str] = None
    """a Minari dataset id or its D4RL name (default antmaze-medium-diverse-v0; with --resume/--eval-only: the checkpoint's)"""
    relabel: bool = True
    """mazes: relabel rewards and terminals against the eval goal cell's centre as D4RL did, and score success there;
    --no-relabel keeps Minari's own rewards, goal and success"""
    critic_steps: int = 1_000_000
    """gradient steps of V and Q (paper: 1M for "IDQL-1", 1.5M for "IDQL-A")"""
    actor_steps: int = 2_000_000
    """gradient steps of the diffusion behaviour policy (paper: 2M for "IDQL-1", 3M for "IDQL-A")"""
    critic_batch_size: int = 256
    """transitions per V/Q step"""
    actor_batch_size: int = 1024
    """transitions per diffusion-policy step"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target Q network"""
    critic_loss: Literal["expectile", "quantile", "exponential"] = "expectile"
    """the V loss f(Q - V) of the generalised IQL critic (Eq. 6)"""
    expectile: Optional[float] = None
    """--critic-loss expectile: the expectile, in (0, 1) (per-domain default: AntMaze 0.9, others 0.7)"""
    quantile: Optional[float] = None
    """--critic-loss quantile: the quantile, in (0, 1) (per-domain default: AntMaze 0.8, others 0.6)"""
    temperature: Optional[float] = None
    """--critic-loss exponential: the temperature alpha of the linex loss, > 0 (per-domain default: AntMaze 0.5, others 1)"""
    exp_clip: float = math.log(6)
    """exponential loss: alpha * (Q - V) above this is continued linearly, so the loss cannot overflow (reference: log 6)"""
    critic_lr: float = 3e-4
    """Q learning rate"""
    value_lr: float = 3e-4
    """V learning rate"""
    hidden_dim: int = 256
    """width of the two hidden layers of V and Q"""
    actor_lr: float = 3e-4
    """diffusion-policy learning rate (cosine-decayed to 0 over actor_steps)"""
    actor_hidden_dim: int = 256
    """width of the LN-ResNet score network (its blocks are 4x wider inside)"""
    actor_num_blocks: int = 3
    """residual blocks of the score network"""
    actor_dropout_rate: float = 0.1
    """dropout at the start of each residual block"""
    ema_rate: float = 0.001
    """rate of the EMA copy of the score network that samples actions"""
    diffusion_steps: int = 5
    """T, the number of DDPM steps (variance-preserving schedule)"""
    num_samples: int = 64
    """N, behaviour samples per state at evaluation (paper: 16 to 256)"""
    selection: Literal["argmax", "implicit"] = "argmax"
    """argmax: the sample of highest Q (Eq. 13); implicit: resample with the critic loss's weights (Algorithm 2)"""
    eval_interval: Optional[int] = None
    """evaluate every this many steps (per-domain default: mazes 100000, others 50000)"""
    eval_episodes: Optional[int] = None
    """episodes per evaluation (per-domain default: mazes 100, others 10)"""
    log_interval: int = 1000
    """write losses and values to tensorboard every this many steps"""
    save_model: bool = True
    """write checkpoints (periodic, final and on Ctrl-C) under runs/{run_name}/"""
    checkpoint_interval: int = 100_000
    """write a checkpoint every this many steps"""
    resume: Optional[str] = None
    """path of a checkpoint to continue its run from (same hyperparameters, same run directory)"""
    eval_only: Optional[str] = None
    """path of a checkpoint to evaluate, without training (its settings, overridden by flags given, e.g. --num-samples)"""
    runs_dir: str = "runs"
    """where run directories (tensorboard events, checkpoints) are created"""


DEFAULT_ENV_ID = "antmaze-medium-diverse-v0"
ACTION_EPS = 1e-5  # dataset actions are clipped to ±(1 − ACTION_EPS), as in IQL
GOAL_RADIUS = 0.5  # D4RL's AntMaze/Maze2d success radius, used for relabelling
UMAZE_EVAL_MAP = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, "r", 0, 0, 1], [1, 1, 1, 1, 1]]
CHECKPOINT_FORMAT = "idql.py checkpoint v1"
VP_BETA_MIN, VP_BETA_MAX = 0.1, 10.0
TIME_FEATURES = 128  # learnable Fourier features of the diffusion step
CRITIC_HYPERPARAM = {"expectile": "expectile", "quantile": "quantile", "exponential": "temperature"}

# The paper's one setting per domain (appendix E); mazes evaluated as the IQL authors did.
MAZE = dict(expectile=0.9, quantile=0.8, temperature=0.5, eval_interval=100_000, eval_episodes=100)
OTHER = dict(expectile=0.7, quantile=0.6, temperature=1.0, eval_interval=50_000, eval_episodes=10)
DOMAIN_DEFAULTS = {"antmaze": MAZE, "pointmaze": MAZE, "locomotion": OTHER, "kitchen": OTHER, "adroit": OTHER}

# Minari's remote catalogue (the datasets this script knows how to read) and the D4RL names that map onto it.
ANTMAZES = ["umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"]
POINTMAZES = [f"{m}{d}" for m in ["open", "umaze", "medium", "large"] for d in ["", "-dense"]]
KITCHENS = ["complete", "partial", "mixed"]
ADROIT = [f"{t}-{q}" for t in ["pen", "door", "hammer", "relocate"] for q in ["human", "cloned", "expert"]]
MUJOCO = {
    e: ["simple", "medium", "expert"] for e in ["ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "walker2d"]
}
MUJOCO |= {e: ["medium", "expert"] for e in ["inverteddoublependulum", "invertedpendulum", "pusher", "reacher", "swimmer"]}
D4RL_TO_MINARI = {
    **{f"antmaze-{m}-v{v}": f"D4RL/antmaze/{m}-v1" for m in ANTMAZES for v in range(3)},
    **{f"maze2d-{m}-v{v}": f"D4RL/pointmaze/{m}-v2" for m in POINTMAZES for v in range(2)},
    **{f"kitchen-{m}-v0": f"D4RL/kitchen/{m}-v2" for m in KITCHENS},
    **{f"{a}-v{v}": "D4RL/{}/{}-v2".format(*a.split("-")) for a in ADROIT for v in range(2)},
}
MINARI_IDS = sorted(set(D4RL_TO_MINARI.values()) | {f"mujoco/{e}/{q}-v0" for e, qs in MUJOCO.items() for q in qs})
D4RL_LOCOMOTION = re.compile(
    r"^(halfcheetah|hopper|walker2d|ant)-"
    r"(random|medium|medium-replay|medium-expert|expert|full-replay)-v\d$"
)


class Batch(NamedTuple):
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    masks: torch.Tensor  # 1 − terminal: the bootstrap mask


def sample_batch(data: Batch, batch_size: int) -> Batch:
    """`batch_size` transitions drawn uniformly with replacement: one index per transition, the same for every field."""
    idx = torch.randint(len(data.rewards), (batch_size,), device=data.rewards.device)
    return Batch(*(x[idx] for x in data))


def fail(message: str):
    """Stop with a one-line error (exit status 2, as for a bad flag) that says what to do."""
    print(f"idql.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_dataset_id(name: str, local_ids=()) -> str:
    """A Minari id (or a dataset present locally) as is, a D4RL name mapped onto Minari; otherwise a helpful error."""
    if name in MINARI_IDS or name in local_ids:
        return name
    if name in D4RL_TO_MINARI:
        return D4RL_TO_MINARI[name]
    if m := D4RL_LOCOMOTION.match(name):
        env, quality = m.group(1), m.group(2)
        nearest = {"random": "simple", "medium-replay": "medium", "medium-expert": "expert", "full-replay": "expert"}
        fail(
            f"'{name}' is D4RL locomotion data, which Minari does not carry; the nearest Minari dataset is "
            f"'mujoco/{env}/{nearest.get(quality, quality)}-v0' (new data on Gymnasium v5, no reference scores: "
            f"not comparable with the paper's table). Pass that id with --env-id to train on it."
        )
    close = difflib.get_close_matches(name, MINARI_IDS + sorted(D4RL_TO_MINARI), n=3, cutoff=0.5)
    fail(
        f"unknown dataset '{name}'. Closest accepted names: {', '.join(close) or 'none'}. "
        f"Use a Minari id (e.g. D4RL/antmaze/medium-diverse-v1) or its D4RL name (e.g. antmaze-medium-diverse-v0)."
    )


def domain_of(dataset_id: str) -> str:
    for key in ["antmaze", "pointmaze", "kitchen"]:
        if f"/{key}/" in dataset_id:
            return key
    return "adroit" if re.search(r"/(pen|door|hammer|relocate)/", dataset_id) else "locomotion"


def flat_observation(obs, domain: str) -> np.ndarray:
    """The observation as D4RL had it: AntMaze (x, y) + the ant's 27 dims = 29; PointMaze and Kitchen the 'observation'."""
    if domain == "antmaze":
        return np.concatenate([obs["achieved_goal"], obs["observation"]], axis=-1)
    return obs["observation"] if isinstance(obs, dict) else obs


def relabel(achieved_goal: np.ndarray, goal: np.ndarray, dense: bool) -> tuple:
    """(reward, terminal) against the eval goal cell's centre, as D4RL labelled its mazes: terminal within GOAL_RADIUS;
    reward 1 there and 0 elsewhere, or exp(−distance) for dense datasets (D4RL's maze2d-*-dense)."""
    distance = np.linalg.norm(np.asarray(achieved_goal) - goal, axis=-1)
    reached = distance <= GOAL_RADIUS
    return (np.exp(-distance) if dense else reached).astype(np.float32), reached


def episode_transitions(episode, domain: str, goal: Optional[np.ndarray], dense: bool = False, action_scale=(-1.0, 1.0)):
    """(obs, actions, rewards, next_obs, masks) of one Minari episode; with `goal`, rewards and terminals are relabelled.
    Actions are mapped from [low, high] to [−1, 1]."""
    obs = flat_observation(episode.observations, domain).astype(np.float32)
    rewards, terminals = np.asarray(episode.rewards, np.float32), np.asarray(episode.terminations, bool)
    if goal is not None:
        rewards, terminals = relabel(episode.observations["achieved_goal"][1:], goal, dense)
    masks = 1.0 - terminals.astype(np.float32)  # a time-limit truncation is not a terminal: it still bootstraps
    low, high = action_scale
    actions = 2.0 * (np.asarray(episode.actions, np.float32) - low) / (high - low) - 1.0
    return obs[:-1], np.clip(actions, -1 + ACTION_EPS, 1 - ACTION_EPS), rewards, obs[1:], masks


def preprocess_rewards(rewards: np.ndarray, episode_returns: np.ndarray, domain: str) -> np.ndarray:
    """As IQL (paper appendix D): mazes r − 1; locomotion r · 1000 / (max − min episode return); else none."""
    if domain in ("antmaze", "pointmaze"):
        return rewards - 1.0
    if domain == "locomotion" and np.ptp(episode_returns) > 1e-6:  # all returns equal: nothing to normalise
        return rewards * 1000.0 / np.ptp(episode_returns)
    return rewards


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Eq. (1) (IQL paper: Eq. 5): L_2^τ(u) = |τ − 1(u < 0)| u², u = Q(s, a) − V(s)."""
    return (torch.where(diff < 0, 1.0 - expectile, expectile) * diff.square()).mean()


def quantile_loss(diff: torch.Tensor, quantile: float) -> torch.Tensor:
    """Section 4.1, quantiles: L_1^τ(u) = |τ − 1(u < 0)| |u|."""
    return (torch.where(diff < 0, 1.0 - quantile, quantile) * diff.abs()).mean()


def exponential_loss(diff: torch.Tensor, temperature: float, exp_clip: float) -> torch.Tensor:
    """Section 4.1, linex: f(u) = (exp(αu) − αu − 1)/α, continued linearly above αu = exp_clip so it cannot overflow."""
    x = temperature * diff
    xc = x.clamp(max=exp_clip)
    return ((torch.exp(xc) - xc - 1 + (math.exp(exp_clip) - 1) * (x - xc)) / temperature).mean()


def value_loss(diff: torch.Tensor, args) -> torch.Tensor:
    """Eq. (6): the generalised IQL critic, mean of f(Q − V) for the chosen f."""
    if args.critic_loss == "expectile":
        return expectile_loss(diff, args.expectile)
    if args.critic_loss == "quantile":
        return quantile_loss(diff, args.quantile)
    return exponential_loss(diff, args.temperature, args.exp_clip)


def implicit_log_weights(q: torch.Tensor, v: torch.Tensor, critic_loss: str, hyperparam: float) -> torch.Tensor:
    """log w(s, a) of the implicit actor π_imp ∝ μ · w (Theorem 4.1): Eq. (9) expectile, (10) quantile, (12) exponential."""
    u = q - v
    if critic_loss == "expectile":  # Eq. (9): |τ − 1(Q < V)|
        return torch.log(torch.where(u < 0, 1.0 - hyperparam, hyperparam))
    if critic_loss == "quantile":  # Eq. (10): |τ − 1(Q < V)| / |Q − V|
        return torch.log(torch.where(u < 0, 1.0 - hyperparam, hyperparam)) - torch.log(u.abs().clamp(min=1e-6))
    x = hyperparam * u  # Eq. (12): α |exp(α(Q − V)) − 1| / |Q − V|, in log space: exp(αu) overflows float32 for αu > 88
    log_abs_expm1 = x.clamp(min=0) + torch.log(-torch.expm1(-x.abs()))  # log|e^x − 1| for either sign of x
    log_w = math.log(hyperparam) + log_abs_expm1 - torch.log(u.abs().clamp(min=1e-6))
    return torch.where(u.abs() < 1e-6, 2 * math.log(hyperparam), log_w)  # the limit as u → 0 is α²


def vp_beta_schedule(diffusion_steps: int) -> torch.Tensor:
    """Appendix F.3's variance-preserving schedule (Song et al.): α_t = exp(−b_min/T − ½(b_max − b_min)(2t − 1)/T²)."""
    t = torch.arange(1, diffusion_steps + 1, dtype=torch.float64)
    alphas = torch.exp(-VP_BETA_MIN / diffusion_steps - 0.5 * (VP_BETA_MAX - VP_BETA_MIN) * (2 * t - 1) / diffusion_steps**2)
    return (1 - alphas).float()


def noisy_actions(actions: torch.Tensor, noise: torch.Tensor, alpha_hat: torch.Tensor) -> torch.Tensor:
    """Eq. (4)'s input: √ᾱ_t a + √(1 − ᾱ_t) ε."""
    return alpha_hat.sqrt().unsqueeze(-1) * actions + (1 - alpha_hat).sqrt().unsqueeze(-1) * noise


def ddpm_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. (4): ‖ε − ε̂‖² summed over action dimensions (squared, as in the reference code), mean over the batch."""
    return (eps_pred - noise).square().sum(-1).mean()


def ddpm_sample(score_net, obs: torch.Tensor, betas: torch.Tensor, act_dim: int, generator=None) -> torch.Tensor:
    """Eq. (5), from a_T ~ N(0, I) down to a_0; no noise at the last step; clipped to [−1, 1] after each step."""
    alphas = 1 - betas
    alpha_hats = torch.cumprod(alphas, 0)
    x = torch.randn(len(obs), act_dim, device=obs.device, generator=generator)
    for t in reversed(range(len(betas))):
        eps = score_net(x, obs, torch.full((len(obs),), t, device=obs.device))
        x = (x - betas[t] / (1 - alpha_hats[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:
            x = x + betas[t].sqrt() * torch.randn(x.shape, device=obs.device, generator=generator)
        x = x.clamp(-1.0, 1.0)
    return x


def select_actions(actions: torch.Tensor, q: torch.Tensor, log_w: torch.Tensor, selection: str, generator=None):
    """Algorithm 2 on (states, N) candidates: the argmax of Q (Eq. 13) or one draw with p_i = w_i / Σ_j w_j."""
    if selection == "argmax":
        idx = q.argmax(1)
    else:
        idx = torch.multinomial(torch.softmax(log_w, 1), 1, generator=generator).squeeze(1)
    return actions[torch.arange(len(actions), device=actions.device), idx]


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, rate: float):
    """target ← (1 − rate) target + rate · source, outside autograd (else every step links target into a growing graph)."""
    for p_t, p in zip(target.parameters(), source.parameters()):
        p_t.lerp_(p, rate)


def orthogonal_(weight: torch.Tensor, bias: torch.Tensor):
    nn.init.orthogonal_(weight, gain=np.sqrt(2))
    nn.init.zeros_(bias)


def lecun_normal_(layer: nn.Linear):
    """Flax's default Dense init (truncated normal, variance 1/fan_in), which the reference's score network uses."""
    std = (1.0 / layer.in_features) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)


class ValueNetwork(nn.Module):
    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(obs_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        for fc in (self.fc1, self.fc2, self.fc3):
            orthogonal_(fc.weight, fc.bias)

    def forward(self, obs):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(obs))))).squeeze(-1)


class TwinQNetwork(nn.Module):
    """Q1 and Q2 with their weights stacked on a leading axis of 2: each layer is one batched matmul for both heads."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        sizes = [(obs_dim + act_dim, hidden), (hidden, hidden), (hidden, 1)]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(2, i, o)) for i, o in sizes])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(2, 1, o)) for _, o in sizes])
        for w, b in zip(self.weights, self.biases):
            for head in range(2):
                orthogonal_(w.data[head].T, b.data[head])

    def forward(self, obs, actions):  # -> (2, batch)
        x = torch.cat([obs, actions], -1).expand(2, -1, -1)
        x = F.relu(torch.baddbmm(self.biases[0], x, self.weights[0]))
        x = F.relu(torch.baddbmm(self.biases[1], x, self.weights[1]))
        return torch.baddbmm(self.biases[2], x, self.weights[2]).squeeze(-1)


class ResidualBlock(nn.Module):
    """Appendix G's MLPResNet block: x + Dense(h)(mish(Dense(4h)(LayerNorm(Dropout(x)))))."""

    def __init__(self, hidden: int, dropout_rate: float):
        super().__init__()
        self.dropout, self.norm = nn.Dropout(dropout_rate), nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        lecun_normal_(self.fc1)
        lecun_normal_(self.fc2)

    def forward(self, x):
        return x + self.fc2(F.mish(self.fc1(self.norm(self.dropout(x)))))


class ScoreNetwork(nn.Module):
    """ε̂(a_t, s, t): the LN-ResNet of appendix G on concat(a_t, s, time embedding)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, num_blocks: int, dropout_rate: float):
        super().__init__()
        self.fourier_kernel = nn.Parameter(0.2 * torch.randn(TIME_FEATURES // 2, 1))  # learnable frequencies
        self.time_fc1, self.time_fc2 = nn.Linear(TIME_FEATURES, hidden), nn.Linear(hidden, hidden)
        self.fc_in = nn.Linear(act_dim + obs_dim + hidden, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden, dropout_rate) for _ in range(num_blocks)])
        self.fc_out = nn.Linear(hidden, act_dim)
        lecun_normal_(self.time_fc1)
        lecun_normal_(self.time_fc2)
        for fc in (self.fc_in, self.fc_out):  # the reference's resnet uses Glorot-uniform at both ends
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, noisy_action, obs, t):
        f = 2 * math.pi * t.float().unsqueeze(-1) @ self.fourier_kernel.T
        time_embedding = self.time_fc2(F.silu(self.time_fc1(torch.cat([f.cos(), f.sin()], -1))))
        x = self.fc_in(torch.cat([noisy_action, obs, time_embedding], -1))
        for block in self.blocks:
            x = block(x)
        return self.fc_out(F.mish(x))


@torch.no_grad()
def idql_actions(
    obs, score_net, qf, vf, betas, num_samples: int, selection: str, critic_loss: str, hyperparam: float, generator=None
) -> torch.Tensor:
    """Algorithm 2 for a batch of states: N behaviour samples each (one score-network pass per diffusion step), scored
    with min(Q1, Q2) of the target critic, then argmax or resampled."""
    obs_n = obs.repeat_interleave(num_samples, 0)
    actions = ddpm_sample(score_net, obs_n, betas, score_net.fc_out.out_features, generator)
    q = qf(obs_n, actions).min(0).values.view(len(obs), num_samples)
    log_w = None if selection == "argmax" else implicit_log_weights(q, vf(obs).unsqueeze(1), critic_loss, hyperparam)
    return select_actions(actions.view(len(obs), num_samples, -1), q, log_w, selection, generator)


def load_minari_dataset(dataset_id: str):
    import minari

    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # a missing dataset offline surfaces as a network error from the hub client
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        first_line = str(e).splitlines()[0][:160] if str(e) else ""
        fail(
            f"cannot load Minari dataset '{dataset_id}' ({type(e).__name__}: {first_line}). "
            f"Minari looks in {root} (set MINARI_DATASETS_PATH to an absolute path to change it) and downloads what is "
            f"missing; offline, run `minari download {dataset_id}` on a machine with network access and copy "
            f"{os.path.join(root, dataset_id)} here."
        )


class RelabelledGoal(gym.Wrapper):
    """A maze judged as its data was relabelled: success, terminal and reward within GOAL_RADIUS of the goal cell's
    centre. Gymnasium-Robotics moves its goal by up to ±0.25 × maze scale per axis at each reset and judges within 0.45."""

    def __init__(self, env, dense: bool):
        super().__init__(env)
        self.goal, self.dense = np.asarray(env.unwrapped.maze.unique_goal_locations[0]), dense

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.env.unwrapped.goal = self.goal.copy()  # the env's own goal too, so desired_goal and the target site agree
        self.env.unwrapped.update_target_site_pos()
        obs["desired_goal"] = self.goal.copy()
        return obs, {**info, "success": bool(relabel(obs["achieved_goal"], self.goal, self.dense)[1])}

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        reward, reached = relabel(obs["achieved_goal"], self.goal, self.dense)
        return obs, float(reward), bool(terminated or reached), truncated, {**info, "success": bool(reached)}


def make_eval_env(dataset, dataset_id: str, domain: str, relabelled: bool = True):
    """The dataset's eval env. Mazes are made episodic (an episode ends at the goal) and, if `relabelled`, judged at the
    relabelling goal (RelabelledGoal); without it, by Minari's own goal and success."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    if domain not in ("antmaze", "pointmaze"):
        return dataset.recover_environment(eval_env=True)
    kwargs = dict(continuing_task=False, reset_target=False)
    if dataset_id.startswith("D4RL/antmaze/umaze"):
        kwargs["maze_map"] = UMAZE_EVAL_MAP
    env = dataset.recover_environment(eval_env=True, **kwargs)
    return RelabelledGoal(env, dense=dataset_id.endswith("-dense-v2")) if relabelled else env


def load_transitions(dataset, domain: str, goal: Optional[np.ndarray], dense: bool, action_scale) -> dict:
    parts = [episode_transitions(ep, domain, goal, dense, action_scale) for ep in dataset.iterate_episodes()]
    obs, actions, rewards, next_obs, masks = (np.concatenate(x) for x in zip(*parts))
    rewards = preprocess_rewards(rewards, np.array([p[2].sum() for p in parts]), domain)
    data = dict(observations=obs, actions=actions, rewards=rewards, next_observations=next_obs, masks=masks)
    for k, v in data.items():
        if not np.isfinite(v).all():
            fail(f"the dataset's {k} contain NaN or inf; repair or re-download the dataset")
    return data


@torch.no_grad()
def evaluate(policy, make_env, n_episodes: int, seed: int, domain: str, device, action_scale, n_envs: int = 25) -> dict:
    """`policy(obs_batch, generator)` on `n_episodes` seeded episodes, several envs stepped side by side (one batched
    policy call per step for all of them); its noise comes from a generator seeded with `seed`, not the training RNG.
    The same seeds every time: every evaluation of a run starts from the same states, so scores differ by the policy only.
    Actions in [−1, 1] are mapped back to the action space's [low, high]."""
    low, high = action_scale
    generator = torch.Generator(device).manual_seed(seed)
    envs = [make_env() for _ in range(min(n_envs, n_episodes))]
    returns, successes, distances = [], [], []
    for first in range(0, n_episodes, len(envs)):
        batch = envs[: n_episodes - first]
        raw = [env.reset(seed=seed + first + i)[0] for i, env in enumerate(batch)]
        ret, success, alive = np.zeros(len(batch)), np.zeros(len(batch), bool), np.ones(len(batch), bool)
        while alive.any():
            live = np.flatnonzero(alive)
            obs = np.stack([flat_observation(raw[i], domain) for i in live])
            actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device), generator)
            for i, action in zip(live, low + (actions.cpu().numpy() + 1.0) * (high - low) / 2.0):
                raw[i], r, terminated, truncated, info = batch[i].step(action)
                ret[i] += r
                success[i] |= bool(info.get("success", False))
                alive[i] = not (terminated or truncated)
        returns += ret.tolist()
        successes += success.tolist()
        distances += [np.linalg.norm(o["achieved_goal"] - o["desired_goal"]) if isinstance(o, dict) else np.nan for o in raw]
    for env in envs:
        env.close()
    return dict(returns=np.array(returns), successes=np.array(successes), goal_distances=np.array(distances))


def append_evaluation(path: str, row: dict):
    """Append one evaluation to the run's CSV at once, so that a crash loses none (the header comes with the first)."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        table = csv.DictWriter(f, fieldnames=list(row))
        if new:
            table.writeheader()
        table.writerow(row)


def keep_evaluations_until(path: str, step: int):
    if os.path.exists(path):
        with open(path) as f:
            header, *lines = f.readlines()
        with open(path + ".tmp", "w") as f:
            f.writelines([header] + [line for line in lines if int(line.split(",")[0]) <= step])
        os.replace(path + ".tmp", path)


def evaluations_summary(path: str) -> str:
    """The last and the best evaluation of the run (the score, or the mean return where there is no score)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = list(csv.DictReader(f))
    if not rows:  # none yet, or all after the checkpoint a run resumed from
        return "no evaluation was run"
    key = "score" if rows[-1]["score"] else "mean_return"
    best = max(rows, key=lambda row: float(row[key]))
    return (
        f"last {key} {float(rows[-1][key]):.1f} at step {rows[-1]['step']} | best {float(best[key]):.1f} at step "
        f"{best['step']} | all evaluations: {path}"
    )


def score_of(result: dict, domain: str, ref_scores) -> Optional[float]:
    """The paper's normalised score ×100: success rate for mazes, (return − ref_min)/(ref_max − ref_min) elsewhere."""
    if domain in ("antmaze", "pointmaze"):
        return 100.0 * result["successes"].mean()
    if None in ref_scores:
        return None
    return 100.0 * (result["returns"].mean() - ref_scores[0]) / (ref_scores[1] - ref_scores[0])


def load_checkpoint(path: str, device) -> dict:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        fail(f"no checkpoint at '{path}'; give the path of a checkpoint_<step>.pt file written by idql.py")
    except Exception as e:
        fail(
            f"cannot read checkpoint '{path}' ({type(e).__name__}); the file is corrupt or not a torch checkpoint. "
            f"Use another checkpoint_<step>.pt from the same run directory."
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fail(f"'{path}' is not an idql.py checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return ckpt


def save_checkpoint(path: str, state: dict):
    """Write to a temporary file, then rename: a crash mid-write never leaves a truncated checkpoint behind."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def check_args(args: Args, user_set: dict):
    for loss, flag in CRITIC_HYPERPARAM.items():
        if user_set.get(flag) is not None and loss != args.critic_loss:
            fail(f"--{flag} belongs to --critic-loss {loss}, not {args.critic_loss}; drop it or pass --critic-loss {loss}")
    checks = [
        (0 < args.expectile < 1, f"--expectile must be in (0, 1), got {args.expectile} (paper: 0.7, 0.9)"),
        (0 < args.quantile < 1, f"--quantile must be in (0, 1), got {args.quantile} (paper: 0.6, 0.8)"),
        (args.temperature > 0, f"--temperature must be > 0, got {args.temperature} (paper: 0.5, 1.0)"),
        (args.exp_clip > 0, f"--exp-clip must be > 0, got {args.exp_clip}"),
        (0 <= args.actor_dropout_rate < 1, f"--actor-dropout-rate must be in [0, 1), got {args.actor_dropout_rate}"),
        (0 < args.gamma <= 1, f"--gamma must be in (0, 1], got {args.gamma}"),
        (0 < args.tau <= 1, f"--tau must be in (0, 1], got {args.tau}"),
        (0 < args.ema_rate <= 1, f"--ema-rate must be in (0, 1], got {args.ema_rate} (paper: 0.001)"),
        (min(args.actor_lr, args.critic_lr, args.value_lr) > 0, "learning rates must be > 0"),
        (min(args.critic_steps, args.actor_steps) > 0, "--critic-steps and --actor-steps must be > 0"),
        (
            min(args.critic_batch_size, args.actor_batch_size, args.hidden_dim, args.actor_hidden_dim, args.actor_num_blocks)
            > 0,
            "batch sizes, hidden dims and --actor-num-blocks must be > 0",
        ),
        (min(args.diffusion_steps, args.num_samples) > 0, "--diffusion-steps and --num-samples must be > 0 (paper: 5 and 64)"),
        (
            min(args.eval_interval, args.eval_episodes, args.log_interval, args.checkpoint_interval) > 0,
            "--eval-interval, --eval-episodes, --log-interval and --checkpoint-interval must be > 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            fail(message)


if __name__ == "__main__":
    args = tyro.cli(Args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    ckpt = load_checkpoint(args.resume or args.eval_only, device) if (args.resume or args.eval_only) else None
    import minari  # noqa: E402  (after argument parsing, so that --help and bad flags answer at once)

    local_ids = set(minari.list_local_datasets())
    dataset_id = resolve_dataset_id(args.env_id or (ckpt["dataset_id"] if ckpt else DEFAULT_ENV_ID), local_ids)
    if ckpt and dataset_id != ckpt["dataset_id"]:
        fail(f"the checkpoint was trained on '{ckpt['dataset_id']}', not '{dataset_id}'; drop --env-id or pass that dataset")
    user_set = {k: getattr(args, k) for k in CRITIC_HYPERPARAM.values()}
    if args.resume:  # the same run goes on: its hyperparameters, not today's defaults
        args, user_set = replace(Args(**ckpt["args"]), resume=args.resume, cuda=args.cuda), {}
    elif args.eval_only:
        saved = Args(**ckpt["args"])  # the checkpoint's settings are the defaults; flags given override them
        args, user_set = tyro.cli(Args, default=replace(saved, eval_only=args.eval_only, env_id=saved.env_id)), {}
    domain = domain_of(dataset_id)
    args = replace(args, env_id=dataset_id, **{k: v for k, v in DOMAIN_DEFAULTS[domain].items() if getattr(args, k) is None})
    check_args(args, user_set)
    hyperparam = getattr(args, CRITIC_HYPERPARAM[args.critic_loss])

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.torch_deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)

    dataset = load_minari_dataset(dataset_id)
    is_maze = domain in ("antmaze", "pointmaze")
    eval_env = make_eval_env(dataset, dataset_id, domain, args.relabel)
    goal = eval_env.goal if is_maze and args.relabel else None  # the goal cell's centre, without noise
    ref_scores = (dataset.storage.metadata.get("ref_min_score"), dataset.storage.metadata.get("ref_max_score"))
    obs_dim = flat_observation(eval_env.observation_space.sample(), domain).shape[0]
    act_dim = eval_env.action_space.shape[0]
    action_scale = (eval_env.action_space.low.astype(np.float32), eval_env.action_space.high.astype(np.float32))
    eval_env.close()

    actor = ScoreNetwork(obs_dim, act_dim, args.actor_hidden_dim, args.actor_num_blocks, args.actor_dropout_rate).to(device)
    actor_ema = copy.deepcopy(actor).requires_grad_(False).eval()  # samples actions; dropout off
    qf, vf = TwinQNetwork(obs_dim, act_dim, args.hidden_dim).to(device), ValueNetwork(obs_dim, args.hidden_dim).to(device)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    betas = vp_beta_schedule(args.diffusion_steps).to(device)
    alpha_hats = torch.cumprod(1 - betas, 0)
    eval_seed = args.seed + 100_000

    def policy(obs, generator):
        return idql_actions(
            obs, actor_ema, qf_target, vf, betas, args.num_samples, args.selection, args.critic_loss, hyperparam, generator
        )

    def run_evaluation():
        make_env = functools.partial(make_eval_env, dataset, dataset_id, domain, args.relabel)
        result = evaluate(policy, make_env, args.eval_episodes, eval_seed, domain, device, action_scale)
        score = score_of(result, domain, ref_scores)
        summary = (
            f"score {'n/a' if score is None else f'{score:.1f}':>6} | success {result['successes'].mean():.2f} | "
            f"return {result['returns'].mean():9.2f}"
        )
        if is_maze:  # the number to look at when a maze score is zero
            summary += f" | goal distance {result['goal_distances'].mean():5.2f}"
        return result, score, summary

    if args.eval_only:
        for name, module in dict(actor_ema=actor_ema, qf_target=qf_target, vf=vf).items():
            module.load_state_dict(ckpt[name])
        summary = run_evaluation()[2]
        print(
            f"eval-only {dataset_id} | checkpoint step {ckpt['step']} | episodes {args.eval_episodes} | "
            f"N {args.num_samples} {args.selection} | {summary} | seed {args.seed}"
        )
        raise SystemExit(0)

    data = load_transitions(dataset, domain, goal, dataset_id.endswith("-dense-v2"), action_scale)
    n_transitions = len(data["rewards"])
    if max(args.critic_batch_size, args.actor_batch_size) > n_transitions:
        fail(
            f"--critic-batch-size {args.critic_batch_size} / --actor-batch-size {args.actor_batch_size} exceed the dataset "
            f"({n_transitions} transitions); lower them"
        )
    data = Batch(*(torch.as_tensor(data[k], device=device) for k in Batch._fields))  # the whole dataset on the device

    fused = dict(fused=True) if device.type in ("cuda", "cpu") else {}
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, **fused)
    qf_optimizer = torch.optim.Adam(qf.parameters(), lr=args.critic_lr, **fused)
    vf_optimizer = torch.optim.Adam(vf.parameters(), lr=args.value_lr, **fused)
    actor_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(actor_optimizer, T_max=args.actor_steps)
    modules = dict(
        actor=actor,
        actor_ema=actor_ema,
        qf=qf,
        qf_target=qf_target,
        vf=vf,
        actor_optimizer=actor_optimizer,
        qf_optimizer=qf_optimizer,
        vf_optimizer=vf_optimizer,
        actor_scheduler=actor_scheduler,
    )

    # TRY NOT TO MODIFY: run directory, resume, logging
    start_step, total_steps = 0, max(args.critic_steps, args.actor_steps)
    if args.resume:
        for name, module in modules.items():
            module.load_state_dict(ckpt[name])
        start_step, run_name, run_dir = ckpt["step"], ckpt["run_name"], os.path.dirname(os.path.abspath(args.resume))
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
        print(f"resuming run {run_name} at step {start_step}/{total_steps} from {args.resume}")
    else:
        run_name = f"{dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join(args.runs_dir, run_name)
    os.makedirs(run_dir, exist_ok=True)
    evaluations_csv = os.path.join(run_dir, "evaluations.csv")
    if args.resume:  # like tensorboard's purge_step: evaluations after the checkpoint are redone
        keep_evaluations_until(evaluations_csv, start_step)
    writer = SummaryWriter(run_dir, purge_step=start_step + 1 if start_step else None)
    hyperparameters = {**asdict(args), "dataset_transitions": n_transitions, "device": str(device)}
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hyperparameters.items()))
    print(f"IDQL on {dataset_id} ({domain}, {n_transitions} transitions, obs {obs_dim}, act {act_dim}) on {device}")
    print("  " + "  ".join(f"{k}={v}" for k, v in asdict(args).items() if k not in ("resume", "eval_only")))

    def checkpoint(step: int) -> str:
        path = os.path.join(run_dir, f"checkpoint_{step}.pt")
        rng_cuda = torch.cuda.get_rng_state() if device.type == "cuda" else None
        save_checkpoint(
            path,
            dict(
                format=CHECKPOINT_FORMAT,
                step=step,
                run_name=run_name,
                dataset_id=dataset_id,
                args=asdict(replace(args, resume=None)),
                obs_dim=obs_dim,
                act_dim=act_dim,
                rng_cpu=torch.get_rng_state(),
                rng_cuda=rng_cuda,
                **{name: module.state_dict() for name, module in modules.items()},
            ),
        )
        return path

    def critic_update(b: Batch) -> torch.Tensor:
        # ALGO LOGIC: V towards the chosen statistic of the target twin-Q's minimum, Eq. (6)
        with torch.no_grad():
            target_q = qf_target(b.observations, b.actions).min(0).values
        v = vf(b.observations)
        vf_loss = value_loss(target_q - v, args)
        vf_optimizer.zero_grad(set_to_none=True)
        vf_loss.backward()
        vf_optimizer.step()

        # ALGO LOGIC: both Q heads regress r + γ (1 − terminal) V(s') with the new V, Eq. (2) (IQL's 6); Polyak update
        with torch.no_grad():
            target = b.rewards + args.gamma * b.masks * vf(b.next_observations)
        q = qf(b.observations, b.actions)
        qf_loss = (q - target).square().mean(1).sum()
        qf_optimizer.zero_grad(set_to_none=True)
        qf_loss.backward()
        qf_optimizer.step()
        soft_update_(qf_target, qf, args.tau)
        return torch.stack([vf_loss, qf_loss, q.mean(), v.mean(), (target_q - v).mean()]).detach()

    def actor_update(b: Batch) -> torch.Tensor:
        # ALGO LOGIC: plain behaviour cloning with the DDPM noise-prediction loss, Eq. (4); t uniform over the T steps
        t = torch.randint(args.diffusion_steps, (len(b.actions),), device=device)
        noise = torch.randn_like(b.actions)
        actor_loss = ddpm_loss(actor(noisy_actions(b.actions, noise, alpha_hats[t]), b.observations, t), noise)
        actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_optimizer.step()
        actor_scheduler.step()
        soft_update_(actor_ema, actor, args.ema_rate)
        return actor_loss.detach()

    stop_requested = []
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))  # finish the step, then checkpoint and exit

    last_good_checkpoint, step = None, start_step
    critic_metrics, actor_loss = torch.full((5,), float("nan")), torch.tensor(float("nan"))
    train_time, log_time, log_step = 0.0, time.perf_counter(), start_step
    for step in range(start_step + 1, total_steps + 1):
        # ALGO LOGIC: critic and actor are independent; each runs for its own number of steps
        if step <= args.critic_steps:
            critic_metrics = critic_update(sample_batch(data, args.critic_batch_size))
        if step <= args.actor_steps:
            actor_loss = actor_update(sample_batch(data, args.actor_batch_size))

        is_eval = step % args.eval_interval == 0 or step == total_steps
        is_ckpt = args.save_model and step % args.checkpoint_interval == 0
        if step % args.log_interval == 0 or is_eval or is_ckpt or stop_requested:  # checked before any checkpoint
            vf_loss, qf_loss, q_mean, v_mean, adv_mean = critic_metrics.tolist()
            losses = dict(vf_loss=vf_loss, qf_loss=qf_loss, actor_loss=actor_loss.item())
            current = [v for k, v in losses.items() if step <= (args.actor_steps if k == "actor_loss" else args.critic_steps)]
            if not np.isfinite(current).all():
                kept = f"the last good checkpoint is {last_good_checkpoint}" if last_good_checkpoint else "none was written"
                fail(
                    f"non-finite loss by step {step} ({', '.join(f'{k} {v}' for k, v in losses.items())}); training stopped "
                    f"and {kept}. Lower the learning rates or check the dataset's scale."
                )
            now = time.perf_counter()
            train_time += now - log_time
            sps = (step - log_step) / max(now - log_time, 1e-9)
            log_step, log_time = step, now
            scalars = {
                **{f"losses/{k}": v for k, v in losses.items()},
                "values/q": q_mean,
                "values/v": v_mean,
                "values/advantage": adv_mean,
                "charts/SPS": sps,
                "charts/learning_rate": actor_scheduler.get_last_lr()[0],
            }
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)
        if is_eval:
            result, score, summary = run_evaluation()
            writer.add_scalar("eval/return", result["returns"].mean(), step)
            writer.add_scalar("eval/success_rate", result["successes"].mean(), step)
            if score is not None:
                writer.add_scalar("eval/normalized_score", score, step)
            row = dict(step=step, score=score, success_rate=result["successes"].mean(), mean_return=result["returns"].mean())
            if is_maze:
                writer.add_scalar("eval/goal_distance", result["goal_distances"].mean(), step)
                row["goal_distance"] = result["goal_distances"].mean()
            append_evaluation(evaluations_csv, row)
            speed = (step - start_step) / max(train_time, 1e-9)
            eta = time.strftime("%H:%M:%S", time.gmtime((total_steps - step) / speed))
            print(f"step {step:>8}/{total_steps} | {summary} | {speed:6.0f} updates/s | ETA {eta}", flush=True)
            log_time = time.perf_counter()  # evaluation time is not training time
        if is_ckpt or (args.save_model and (step == total_steps or stop_requested)):
            last_good_checkpoint = checkpoint(step)
        if stop_requested:
            break

    if stop_requested:
        resume = f"continue with: python idql.py --resume {last_good_checkpoint}" if args.save_model else "--no-save-model"
        print(f"interrupted at step {step}; {resume}")
    elif args.save_model:
        print(f"final checkpoint: {last_good_checkpoint}")
    writer.close()
    print(evaluations_summary(evaluations_csv))
