"""Implicit Diffusion Q-Learning (IDQL), offline, on Minari datasets.

Paper: "IDQL: Implicit Q-Learning as an Actor-Critic Method with Diffusion Policies", Philippe Hansen-Estruch,
Ilya Kostrikov, Michael Janner, Jakub Grudzien Kuba, Sergey Levine, arXiv:2304.10573. Reference: the authors'
JAX code (philippe-eecs/IDQL, jaxrl5/agents/ddpm_iql): IQL's V (expectile, quantile or exponential loss) and
twin Q trained apart from the actor, a DDPM behaviour policy with an LN-ResNet score network (T = 5, variance-
preserving schedule, EMA 0.001, cosine decay), and at evaluation N behaviour samples per state scored by the
target twin-Q minimum: the argmax, or a resample (Algorithm 2). Equation numbers are the IDQL paper's.

Deviations from the reference, with their reasons in docs/idql.md: iql.py's data handling (Minari data,
mazes relabelled and scored as D4RL's were, `--no-relabel`: Minari's own; umaze on the data env's maze;
PointMaze, scored by success rate, with the AntMaze settings; actions mapped to [-1, 1]; every `mujoco/*`
dataset reward-scaled); seeded evaluations with their own noise generator; iql.py's V and twin Q (orthogonal
init, Q loss summed over the heads); separate critic and actor batches; the exponential loss linear above
`--exp-clip`, its weights (Eq. 12) in log space, the quantile weights with |Q - V| floored at 1e-6.
"""

import copy
import collections
import csv
import datetime
import difflib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import farama_notifications
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = "idql"  # the name of this experiment
    seed: int = 1  # seed of the experiment; evaluation episodes use seed + 100000 onwards
    torch_deterministic: bool = True  # deterministic CUDA kernels (CPU runs are repeatable anyway)
    cuda: bool = True  # train on CUDA when it is available
    compile: bool = False  # torch.compile each update as one graph (needs a C++ compiler)
    env_id: Optional[str] = None  # Minari id or D4RL name (default antmaze-medium-diverse-v0)
    relabel: bool = True  # mazes: rewards and terminals at the eval goal, as D4RL's
    critic_steps: int = 1_000_000  # gradient steps of V and Q (paper: IDQL-1 1M, IDQL-A 1.5M)
    actor_steps: int = 2_000_000  # gradient steps of the diffusion policy (paper: IDQL-1 2M, IDQL-A 3M)
    critic_batch_size: int = 256  # transitions per V and Q step
    actor_batch_size: int = 1024  # transitions per diffusion-policy step
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # Polyak rate of the target Q network
    critic_loss: Literal["expectile", "quantile", "exponential"] = "expectile"  # V's loss f(Q − V), Eq. (6)
    expectile: Optional[float] = None  # the expectile loss's τ (default: mazes 0.9, others 0.7)
    quantile: Optional[float] = None  # the quantile loss's τ (default: mazes 0.8, others 0.6)
    exponential_alpha: Optional[float] = None  # the exponential loss's α (default: mazes 0.5, others 1)
    exp_clip: float = math.log(6)  # the exponential loss is linear above α (Q − V) = exp_clip
    critic_lr: float = 3e-4  # Q learning rate
    value_lr: float = 3e-4  # V learning rate
    hidden_dim: int = 256  # width of the two hidden layers of V and Q
    actor_lr: float = 3e-4  # diffusion-policy learning rate (cosine-decayed to 0 over actor_steps)
    actor_hidden_dim: int = 256  # width of the score network (its residual blocks are 4x wider inside)
    actor_num_blocks: int = 3  # residual blocks of the score network
    actor_dropout_rate: float = 0.1  # dropout at the start of each residual block
    ema_rate: float = 0.001  # rate of the score network's EMA copy, which samples the actions
    diffusion_steps: int = 5  # T, the number of DDPM steps
    num_samples: int = 64  # N, behaviour samples per state at evaluation (paper: 16 to 256)
    selection: Literal["argmax", "implicit"] = "argmax"  # Algorithm 2: the highest-Q sample or a draw
    eval_interval: Optional[int] = None  # steps between evaluations (default: mazes 100000, others 50000)
    eval_episodes: Optional[int] = None  # episodes per evaluation (default: mazes 100, others 10)
    log_interval: int = 1000  # log losses and values every this many steps
    save_model: bool = True  # write checkpoints (periodic, final, on Ctrl-C)
    checkpoint_interval: int = 100_000  # write a checkpoint every this many steps
    resume: Optional[str] = None  # checkpoint whose run to continue, with its settings
    eval_only: Optional[str] = None  # checkpoint to evaluate (flags given override its settings)
    runs_dir: str = "runs"  # where run directories are made
    run_name: Optional[str] = None  # the run's folder in runs_dir; if it holds checkpoints, the run continues

    def __post_init__(self):  # tyro builds Args from the flags, so a bad value stops here
        for name in POSITIVE:
            if getattr(self, name) is not None and not 0 < getattr(self, name) < math.inf:
                fail(f"--{name.replace('_', '-')} must be > 0 and finite, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            fail(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.env_id == "":
            fail("--env-id is empty: give a Minari id or a D4RL name, or leave it out for the default")
        for name in ("expectile", "quantile"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) < 1:
                fail(f"--{name} must be in (0, 1), got {getattr(self, name)} (paper: 0.6 to 0.9)")
        for name in ["gamma", "tau", "ema_rate"]:
            if not 0 < getattr(self, name) <= 1:
                fail(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= (self.actor_dropout_rate or 0) < 1:
            fail(f"--actor-dropout-rate must be in [0, 1), got {self.actor_dropout_rate}")


POSITIVE = "critic_steps actor_steps critic_batch_size actor_batch_size exponential_alpha exp_clip".split()
POSITIVE += "critic_lr value_lr hidden_dim actor_lr actor_hidden_dim actor_num_blocks diffusion_steps".split()
POSITIVE += "num_samples eval_interval eval_episodes log_interval checkpoint_interval".split()
# the flags a resumed run may change (it keeps its checkpoint's folder and settings); --eval-only these too
RUN_CONTROL = "cuda compile eval_interval eval_episodes log_interval save_model checkpoint_interval".split()
EVAL_CONTROL = ["seed", "relabel", "num_samples", "selection"]
ACTION_EPS = 1e-5  # dataset actions are clipped to ±(1 − ACTION_EPS), as in IQL
GOAL_RADIUS = 0.5  # D4RL's AntMaze/Maze2d success radius
UMAZE_EVAL_MAP = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, "r", 0, 0, 1], [1, 1, 1, 1, 1]]
CHECKPOINT_FORMAT = "idql.py checkpoint v2"
CHECKPOINT_KEYS = "actor actor_ema qf qf_target vf actor_optimizer qf_optimizer vf_optimizer".split()
CHECKPOINT_KEYS += "step dataset_id args evaluations rng_cpu rng_cuda".split()
VP_BETA_MIN, VP_BETA_MAX = 0.1, 10.0
TIME_FEATURES = 128  # learnable Fourier features of the diffusion step
LOSS_PARAMETER = dict(expectile="expectile", quantile="quantile", exponential="exponential_alpha")
METRICS = "losses/vf_loss losses/qf_loss losses/actor_loss values/q values/v values/advantage".split()
METRICS += "charts/SPS charts/learning_rate".split()
EVAL_TAGS = dict(score="eval/normalized_score", success_rate="eval/success_rate", mean_return="eval/return")

# The paper's one setting per domain (appendix E); mazes evaluated as the IQL authors did.
MAZE = dict(expectile=0.9, quantile=0.8, exponential_alpha=0.5, eval_interval=100_000, eval_episodes=100)
OTHER = dict(expectile=0.7, quantile=0.6, exponential_alpha=1.0, eval_interval=50_000, eval_episodes=10)
DOMAIN_DEFAULTS = dict(antmaze=MAZE, pointmaze=MAZE, locomotion=OTHER, kitchen=OTHER, adroit=OTHER)

# Minari's remote catalogue (what this script can read) and the D4RL names that map onto it.
ANTMAZES = "umaze umaze-diverse medium-play medium-diverse large-play large-diverse".split()
POINTMAZES = "open umaze medium large open-dense umaze-dense medium-dense large-dense".split()
ADROIT = [f"{t}/{d}" for t in ("pen", "door", "hammer", "relocate") for d in ("human", "cloned", "expert")]
MUJOCO = "ant halfcheetah hopper humanoid humanoidstandup walker2d".split()
MUJOCO_SMALL = "inverteddoublependulum invertedpendulum pusher reacher swimmer".split()
D4RL_TO_MINARI = {f"antmaze-{m}-v{v}": f"D4RL/antmaze/{m}-v1" for m in ANTMAZES for v in range(3)}
D4RL_TO_MINARI |= {f"maze2d-{m}-v{v}": f"D4RL/pointmaze/{m}-v2" for m in POINTMAZES for v in range(2)}
D4RL_TO_MINARI |= {f"kitchen-{m}-v0": f"D4RL/kitchen/{m}-v2" for m in ("complete", "partial", "mixed")}
D4RL_TO_MINARI |= {f"{a.replace('/', '-')}-v{v}": f"D4RL/{a}-v2" for a in ADROIT for v in range(2)}
MINARI_IDS = [f"mujoco/{e}/{q}-v0" for e in MUJOCO for q in ("simple", "medium", "expert")]
MINARI_IDS += [f"mujoco/{e}/{q}-v0" for e in MUJOCO_SMALL for q in ("medium", "expert")]
MINARI_IDS += sorted(set(D4RL_TO_MINARI.values()))
D4RL_LOCOMOTION = re.compile(
    r"(halfcheetah|hopper|walker2d|ant)-(random|medium|medium-replay|medium-expert|expert|full-replay)-v\d"
)
NEAREST_MINARI = {"random": "simple", "medium-replay": "medium", "full-replay": "expert"}  # else last word
Batch = collections.namedtuple("Batch", "observations actions rewards next_observations masks")


# ALGO LOGIC: the losses and the diffusion, with the paper's equation numbers
def expectile_loss(diff, expectile):
    """Eq. (1): L_2^τ(u) = |τ − 1(u < 0)| u², with u = Q(s, a) − V(s)."""
    return (torch.where(diff < 0, 1.0 - expectile, expectile) * diff.square()).mean()


def quantile_loss(diff, quantile):
    """Section 4.1, quantiles: L_1^τ(u) = |τ − 1(u < 0)| |u|."""
    return (torch.where(diff < 0, 1.0 - quantile, quantile) * diff.abs()).mean()


def exponential_loss(diff, alpha, exp_clip):
    """Section 4.1, linex: (exp(αu) - αu - 1) / α, linear above αu = exp_clip so that it cannot overflow."""
    x = alpha * diff
    xc = x.clamp(max=exp_clip)
    return ((torch.exp(xc) - xc - 1 + (math.exp(exp_clip) - 1) * (x - xc)) / alpha).mean()


def value_loss(diff, args):
    """Eq. (6): the generalised IQL critic, the mean of f(Q − V) for the chosen f."""
    if args.critic_loss == "expectile":
        return expectile_loss(diff, args.expectile)
    if args.critic_loss == "quantile":
        return quantile_loss(diff, args.quantile)
    return exponential_loss(diff, args.exponential_alpha, args.exp_clip)


def implicit_log_weights(q, v, critic_loss, param):
    """log w(s, a) of the implicit actor π_imp ∝ μ w (Theorem 4.1), for the critic loss with this τ or α."""
    u = q - v
    if critic_loss == "expectile":  # Eq. (9): |τ − 1(Q < V)|
        return torch.log(torch.where(u < 0, 1.0 - param, param))
    if critic_loss == "quantile":  # Eq. (10): |τ − 1(Q < V)| / |Q − V|
        return torch.log(torch.where(u < 0, 1.0 - param, param)) - torch.log(u.abs().clamp(min=1e-6))
    x = param * u  # Eq. (12): α |exp(αu) − 1| / |u|, in log space: exp(αu) overflows float32 for αu > 88
    log_abs_expm1 = x.clamp(min=0) + torch.log(-torch.expm1(-x.abs()))  # log |e^x − 1| for either sign of x
    log_w = math.log(param) + log_abs_expm1 - torch.log(u.abs().clamp(min=1e-6))
    return torch.where(u.abs() < 1e-6, 2 * math.log(param), log_w)  # the limit as u → 0 is α²


def vp_beta_schedule(diffusion_steps):
    """Appendix F.3's variance-preserving schedule: β_t = 1 − exp(−b_min/T − ½(b_max − b_min)(2t − 1)/T²)."""
    t, T = torch.arange(1, diffusion_steps + 1, dtype=torch.float64), diffusion_steps
    return (1 - torch.exp(-VP_BETA_MIN / T - 0.5 * (VP_BETA_MAX - VP_BETA_MIN) * (2 * t - 1) / T**2)).float()


def noisy_actions(actions, noise, alpha_hat):
    """Eq. (4)'s input: √ᾱ_t a + √(1 − ᾱ_t) ε."""
    return alpha_hat.sqrt().unsqueeze(-1) * actions + (1 - alpha_hat).sqrt().unsqueeze(-1) * noise


def ddpm_loss(eps_pred, noise):
    """Eq. (4): ‖ε − ε̂‖² summed over action dimensions (squared, as the reference), mean over the batch."""
    return (eps_pred - noise).square().sum(-1).mean()


def ddpm_sample(score_net, obs, betas, act_dim, generator=None):
    """Eq. (5), from a_T ~ N(0, I) down to a_0; no noise at the last step; clipped to [−1, 1] at each step."""
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


def select_actions(actions, q, log_w, selection, generator=None):
    """Algorithm 2 on (states, N) candidates: the argmax of Q (Eq. 13), or a draw with p_i = w_i / Σ_j w_j."""
    if selection == "argmax":
        idx = q.argmax(1)
    else:
        idx = torch.multinomial(torch.softmax(log_w, 1), 1, generator=generator).squeeze(1)
    return actions[torch.arange(len(actions), device=actions.device), idx]


@torch.no_grad()
def idql_actions(obs, score_net, qf, vf, betas, num_samples, selection, critic_loss, param, generator=None):
    """Algorithm 2 for a batch of states: N behaviour samples each, scored by min(Q1, Q2), then selected."""
    obs_n = obs.repeat_interleave(num_samples, 0)
    actions = ddpm_sample(score_net, obs_n, betas, score_net.fc_out.out_features, generator)
    q = qf(obs_n, actions).min(0).values.view(len(obs), num_samples)
    log_w = None if selection == "argmax" else implicit_log_weights(q, vf(obs)[:, None], critic_loss, param)
    return select_actions(actions.view(len(obs), num_samples, -1), q, log_w, selection, generator)


@torch.no_grad()  # the target is a running average, outside any graph
def polyak_update(target, source, tau):  # θ̂ ← (1 − τ) θ̂ + τ θ
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def orthogonal_init(module):
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
            nn.init.zeros_(layer.bias)


def lecun_normal_(layer):
    """Flax's default Dense init (truncated normal, variance 1/fan_in), as the reference's score network."""
    std = (1.0 / layer.in_features) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)


class ValueNetwork(nn.Module):
    def __init__(self, obs_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        orthogonal_init(self)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class TwinQNetwork(nn.Module):
    """Two Q MLPs with their weights stacked on a leading axis of 2: each layer is one batched matmul."""

    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        layers = list(zip(*(ValueNetwork(obs_dim + act_dim, hidden).net[::2] for _ in range(2))))
        self.weights = nn.ParameterList([torch.stack([a.weight.T, b.weight.T]).detach() for a, b in layers])
        self.biases = nn.ParameterList([torch.stack([a.bias, b.bias])[:, None].detach() for a, b in layers])

    def forward(self, obs, actions):  # -> (2, batch)
        x = torch.cat([obs, actions], -1).expand(2, -1, -1)
        x = F.relu(torch.baddbmm(self.biases[0], x, self.weights[0]))
        x = F.relu(torch.baddbmm(self.biases[1], x, self.weights[1]))
        return torch.baddbmm(self.biases[2], x, self.weights[2]).squeeze(-1)


class ResidualBlock(nn.Module):
    """Appendix G's MLPResNet block: x + Dense(h)(mish(Dense(4h)(LayerNorm(Dropout(x)))))."""

    def __init__(self, hidden, dropout_rate):
        super().__init__()
        self.dropout, self.norm = nn.Dropout(dropout_rate), nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        lecun_normal_(self.fc1)
        lecun_normal_(self.fc2)

    def forward(self, x):
        return x + self.fc2(F.mish(self.fc1(self.norm(self.dropout(x)))))


class ScoreNetwork(nn.Module):
    """ε̂(a_t, s, t): appendix G's LN-ResNet on concat(a_t, s, time embedding)."""

    def __init__(self, obs_dim, act_dim, hidden, num_blocks, dropout_rate):
        super().__init__()
        self.fourier_kernel = nn.Parameter(0.2 * torch.randn(TIME_FEATURES // 2, 1))  # learnable frequencies
        self.time_fc1, self.time_fc2 = nn.Linear(TIME_FEATURES, hidden), nn.Linear(hidden, hidden)
        self.fc_in = nn.Linear(act_dim + obs_dim + hidden, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden, dropout_rate) for _ in range(num_blocks)])
        self.fc_out = nn.Linear(hidden, act_dim)
        lecun_normal_(self.time_fc1)
        lecun_normal_(self.time_fc2)
        for fc in (self.fc_in, self.fc_out):  # the reference's resnet has Glorot-uniform at both ends
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, noisy_action, obs, t):
        f = 2 * math.pi * t.float().unsqueeze(-1) @ self.fourier_kernel.T
        time_embedding = self.time_fc2(F.silu(self.time_fc1(torch.cat([f.cos(), f.sin()], -1))))
        x = self.fc_in(torch.cat([noisy_action, obs, time_embedding], -1))
        for block in self.blocks:
            x = block(x)
        return self.fc_out(F.mish(x))


class Adam(nn.Module):
    """torch.optim.Adam with a tensor step count (so --compile traces it) and the actor's cosine decay."""

    def __init__(self, module, lr, decay_steps=0, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.params = list(module.parameters())
        self.lr, self.decay_steps, self.betas, self.eps = lr, decay_steps, betas, eps
        self.register_buffer("step_count", torch.zeros((), device=self.params[0].device))
        self.exp_avg = nn.ParameterList([nn.Parameter(torch.zeros_like(p), False) for p in self.params])
        self.exp_avg_sq = nn.ParameterList([nn.Parameter(torch.zeros_like(p), False) for p in self.params])
        self.m, self.v = list(self.exp_avg), list(self.exp_avg_sq)  # load_state_dict() copies into these

    def learning_rate(self, step):
        """The rate of update step + 1: lr, or lr · ½(1 + cos(π step / decay_steps)) (optax's decay)."""
        if not self.decay_steps:
            return torch.full_like(step, self.lr)
        return self.lr * 0.5 * (1 + torch.cos(math.pi * step.clamp(max=self.decay_steps) / self.decay_steps))

    @torch.no_grad()
    def step(self, grads):
        (beta1, beta2), t = self.betas, self.step_count.add_(1)
        lr, m, v = self.learning_rate(t - 1), self.m, self.v
        if not torch.compiler.is_compiling():  # eager: the kernel of torch.optim.Adam(fused=True), one call
            torch._fused_adam_(self.params, grads, m, v, [], [t] * len(m), lr=lr, beta1=beta1, beta2=beta2,
                               weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)  # fmt: skip
            return
        step_size, bias_correction2_sqrt = lr / (1 - beta1**t), (1 - beta2**t).sqrt()  # the math, to be fused
        for param, grad, m_i, v_i in zip(self.params, grads, m, v):
            m_i.lerp_(grad, 1 - beta1)
            v_i.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            param.sub_(step_size * m_i / (v_i.sqrt() / bias_correction2_sqrt + self.eps))


def value_and_grad(loss_fn, module):
    """(loss, aux) = loss_fn(module) and the loss's gradients: autograd, or torch.func when compiling."""
    params = dict(module.named_parameters())
    if torch.compiler.is_compiling():
        loss_of = lambda p: loss_fn(lambda *x: torch.func.functional_call(module, p, x))  # noqa: E731
        grads, (loss, aux) = torch.func.grad_and_value(loss_of, has_aux=True)(params)
        return (loss, aux), list(grads.values())
    with torch.enable_grad():
        loss, aux = loss_fn(module)
        grads = torch.autograd.grad(loss, list(params.values()))
    return (loss.detach(), aux.detach()), list(grads)


def fail(message):
    print(f"idql.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_dataset_id(name, local_ids=()):
    """A Minari id or a local dataset as it is, a D4RL name mapped onto Minari; otherwise a helpful error."""
    if name in MINARI_IDS or name in local_ids:
        return name
    if name in D4RL_TO_MINARI:
        return D4RL_TO_MINARI[name]
    if m := D4RL_LOCOMOTION.fullmatch(name):
        quality = NEAREST_MINARI.get(m[2], m[2].split("-")[-1])
        fail(f"'{name}' is D4RL locomotion data, which Minari does not carry; the nearest is "
             f"'mujoco/{m[1]}/{quality}-v0' (new data, no reference scores, not comparable with the paper): "
             "pass that to --env-id")  # fmt: skip
    close = difflib.get_close_matches(name, MINARI_IDS + list(D4RL_TO_MINARI), n=3, cutoff=0.5)
    fail(f"unknown dataset '{name}' (closest: {', '.join(close) or 'none'}); give a Minari id such as "
         "D4RL/antmaze/medium-diverse-v1 or a D4RL name such as antmaze-medium-diverse-v0")  # fmt: skip


def domain_of(dataset_id):
    for domain in ["antmaze", "pointmaze", "kitchen"]:
        if f"/{domain}/" in dataset_id:
            return domain
    return "adroit" if re.search(r"/(pen|door|hammer|relocate)/", dataset_id) else "locomotion"


def flat_observation(obs, domain):
    """The observation as D4RL had it: AntMaze (x, y) + the ant's 27 dims; else the 'observation'."""
    if domain == "antmaze":
        return np.concatenate([obs["achieved_goal"], obs["observation"]], axis=-1)
    return obs["observation"] if isinstance(obs, dict) else obs


def relabel(achieved_goal, goal, dense):
    """(reward, terminal) as D4RL labelled mazes: within GOAL_RADIUS of the goal; 1/0 or exp(-distance)."""
    distance = np.linalg.norm(np.asarray(achieved_goal) - goal, axis=-1)
    reached = distance <= GOAL_RADIUS
    return (np.exp(-distance) if dense else reached).astype(np.float32), reached


def episode_transitions(episode, domain, goal, dense=False, action_scale=(-1.0, 1.0)):
    """(obs, actions, rewards, next_obs, masks) of an episode, relabelled if `goal`; actions to [−1, 1]."""
    obs = flat_observation(episode.observations, domain).astype(np.float32)
    rewards, terminals = np.asarray(episode.rewards, np.float32), np.asarray(episode.terminations, bool)
    if goal is not None:
        rewards, terminals = relabel(episode.observations["achieved_goal"][1:], goal, dense)
    low, high = action_scale
    actions = 2 * (np.asarray(episode.actions, np.float32) - low) / (high - low) - 1
    actions = np.clip(actions, ACTION_EPS - 1, 1 - ACTION_EPS)
    return obs[:-1], actions, rewards, obs[1:], 1.0 - terminals  # a time-limit truncation bootstraps: mask 1


def preprocess_rewards(rewards, episode_returns, domain):
    """The paper's preprocessing: mazes r - 1; locomotion r * 1000 / (max - min episode return); else none."""
    if domain in ("antmaze", "pointmaze"):
        return rewards - 1.0
    if domain == "locomotion" and np.ptp(episode_returns) > 1e-6:  # all returns equal: nothing to normalise
        return rewards * 1000.0 / np.ptp(episode_returns)
    return rewards


def load_transitions(dataset, domain, goal, dense, action_scale):
    """The dataset as one float32 array, a row per transition: obs | action | reward | next obs | mask."""
    try:  # h5py raises these on a truncated or damaged file
        parts = [episode_transitions(e, domain, goal, dense, action_scale) for e in dataset]
    except (OSError, KeyError) as e:
        path = os.path.join(dataset.storage.data_path, "main_data.hdf5")
        fail(f"{path} is corrupt ({type(e).__name__}: {e}); delete it and download it again: "
             f"minari download {dataset.id}")  # fmt: skip
    obs, actions, rewards, next_obs, masks = (np.concatenate(x) for x in zip(*parts))
    rewards = preprocess_rewards(rewards, np.array([p[2].sum() for p in parts]), domain)
    rows = np.concatenate([obs, actions, rewards[:, None], next_obs, masks[:, None]], 1, dtype=np.float32)
    if not np.isfinite(rows).all():
        fail("the dataset contains NaN or inf: repair or re-download it")
    return rows


def to_batch(rows, obs_dim, act_dim):
    obs, actions, rewards, next_obs, masks = rows.split([obs_dim, act_dim, 1, obs_dim, 1], 1)
    return Batch(obs, actions, rewards.squeeze(1), next_obs, masks.squeeze(1))


def load_minari_dataset(dataset_id):  # minari is imported by the main block, after parsing
    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # a missing dataset offline surfaces as a network error from the hub client
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        reason = f"{type(e).__name__}: {(str(e) or '-').splitlines()[0][:160]}"
        fail(f"cannot load Minari dataset '{dataset_id}' ({reason}). Minari looks in {root} (set by "
             f"MINARI_DATASETS_PATH) and downloads what is missing; offline, run `minari download "
             f"{dataset_id}` elsewhere and copy {os.path.join(root, dataset_id)} here")  # fmt: skip


class RelabelledGoal(gym.Wrapper):
    """A maze judged as its data was relabelled: at the goal cell's centre, not at the env's moving goal."""

    def __init__(self, env, dense):
        super().__init__(env)
        self.goal, self.dense = np.asarray(env.unwrapped.maze.unique_goal_locations[0]), dense

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.env.unwrapped.goal = self.goal.copy()  # the env's own goal too: obs and target site agree
        self.env.unwrapped.update_target_site_pos()
        obs["desired_goal"] = self.goal.copy()
        return obs, {**info, "success": bool(relabel(obs["achieved_goal"], self.goal, self.dense)[1])}

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        reward, reached = relabel(obs["achieved_goal"], self.goal, self.dense)
        return obs, float(reward), bool(terminated or reached), truncated, {**info, "success": bool(reached)}


def make_eval_env(dataset, dataset_id, domain, relabelled=True):
    """The dataset's eval env; a maze episode ends at the goal (the relabelling goal if `relabelled`)."""
    if not re.search(r"/(door|hammer|relocate)/", dataset_id):  # its import prints a notice on these only
        farama_notifications.notifications.pop("gymnasium_robotics", None)
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    if domain not in ("antmaze", "pointmaze"):
        return dataset.recover_environment(eval_env=True)
    umaze = dict(maze_map=UMAZE_EVAL_MAP) if dataset_id.startswith("D4RL/antmaze/umaze") else {}
    env = dataset.recover_environment(eval_env=True, continuing_task=False, reset_target=False, **umaze)
    return RelabelledGoal(env, dataset_id.endswith("-dense-v2")) if relabelled else env


@torch.no_grad()
def evaluate(policy, make_env, n_episodes, seed, domain, device, action_scale, ref_scores=(None, None)):
    """Mean over n_episodes envs side by side, seeded seed, seed + 1, ...; the paper's score (docs/idql.md)"""
    envs = gym.vector.SyncVectorEnv([make_env] * n_episodes)  # an env that finished restarts: ignored
    (low, high), (obs, _) = action_scale, envs.reset(seed=seed)
    returns, distances = np.zeros(n_episodes), np.zeros(n_episodes)
    successes, done = np.zeros(n_episodes, bool), np.zeros(n_episodes, bool)
    generator = torch.Generator(device).manual_seed(seed)  # not the training RNG: evaluating leaves it alone
    while not done.all():
        obs_tensor = torch.as_tensor(flat_observation(obs, domain), dtype=torch.float32, device=device)
        action = low + (policy(obs_tensor, generator).cpu().numpy() + 1) * (high - low) / 2
        obs, rewards, terminated, truncated, info = envs.step(action)
        returns += np.where(done, 0.0, rewards)
        successes |= ~done & np.asarray(info.get("success", False), bool)
        if isinstance(obs, dict):
            distance = np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"], axis=-1)
            distances = np.where(done, distances, distance)
        done |= terminated | truncated
    envs.close()
    result = dict(score=None, success_rate=successes.mean().item(), mean_return=returns.mean().item())
    if domain in ("antmaze", "pointmaze"):  # the final goal distance: what to look at when a score is zero
        result |= dict(score=100 * result["success_rate"], goal_distance=distances.mean().item())
    elif None not in ref_scores:
        result["score"] = 100 * (result["mean_return"] - ref_scores[0]) / (ref_scores[1] - ref_scores[0])
    return result


def summary_of(result):
    score = "n/a" if result["score"] is None else f"{result['score']:.1f}"
    summary = f"score {score:>6} | success {result['success_rate']:.2f} | return {result['mean_return']:9.2f}"
    return summary + (f" | goal distance {result['goal_distance']:5.2f}" if "goal_distance" in result else "")


def write_evaluations(path, evaluations):
    """All of the run's evaluations, rewritten atomically after each one and on resume: a crash loses none."""
    with open(path + ".tmp", "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=list(evaluations[0]) if evaluations else [])
        table.writeheader()
        table.writerows(evaluations)
    os.replace(path + ".tmp", path)


def evaluations_summary(evaluations, path):
    if not evaluations:
        return "no evaluation was run"
    last, key = evaluations[-1], "score" if evaluations[-1]["score"] is not None else "mean_return"
    best = max(evaluations, key=lambda row: row[key])
    best = f"best {best[key]:.1f} at step {best['step']}"
    return f"last {key} {last[key]:.1f} at step {last['step']} | {best} | all evaluations: {path}"


def load_checkpoint(path, device, error=fail):
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        return error(f"no checkpoint at '{path}'; give a checkpoint_<step>.pt written by idql.py")
    except Exception as e:
        return error(f"cannot read checkpoint '{path}' ({type(e).__name__}): corrupt or not a torch file")
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found != CHECKPOINT_FORMAT:
        return error(f"'{path}' is not an idql.py checkpoint of this version (its format: {found!r})")
    if missing := [key for key in CHECKPOINT_KEYS if key not in ckpt]:
        return error(f"'{path}' is an incomplete checkpoint (it has no {', '.join(missing)}); give another")
    return ckpt


def newest_checkpoint(run_dir, device):
    """The path of the run's newest readable checkpoint, from which --run-name continues it, or None."""
    info = Path(run_dir, "run.json")
    if info.exists() and (script := json.loads(info.read_text())["script"]) != "idql.py":
        fail(f"{run_dir} is a run of {script}, not of idql.py; give another --run-name")
    steps = [int(p.stem[11:]) for p in Path(run_dir).glob("checkpoint_*.pt") if p.stem[11:].isdigit()]
    warn = lambda m: print(f"idql.py: warning: {m}; trying an older one", file=sys.stderr)  # noqa: E731
    for path in [os.path.join(run_dir, f"checkpoint_{step}.pt") for step in sorted(steps, reverse=True)]:
        if load_checkpoint(path, device, error=warn):
            return path


if __name__ == "__main__":
    args = tyro.cli(Args)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file as they are printed
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.eval_only and (args.resume or args.run_name):
        fail("--eval-only evaluates a checkpoint and starts no run: drop --resume and --run-name")
    if args.run_name and not args.resume:  # the same command continues the run, from its newest checkpoint
        args = replace(args, resume=newest_checkpoint(os.path.join(args.runs_dir, args.run_name), device))
    ckpt = load_checkpoint(args.resume or args.eval_only, device) if args.resume or args.eval_only else None
    import minari  # noqa: E402  (after parsing, so that --help and bad flags answer at once)

    env_id = args.env_id or (ckpt["dataset_id"] if ckpt else "antmaze-medium-diverse-v0")
    dataset_id = resolve_dataset_id(env_id, minari.list_local_datasets())
    if ckpt:  # the checkpoint's settings are the defaults; a resumed run may change how it runs, not what
        if dataset_id != ckpt["dataset_id"]:
            fail(f"the checkpoint was trained on '{ckpt['dataset_id']}', not '{dataset_id}'; drop --env-id")
        saved = Args(**ckpt["args"])
        args = tyro.cli(Args, default=replace(saved, resume=args.resume, eval_only=args.eval_only))
        control = RUN_CONTROL + (EVAL_CONTROL if args.eval_only else []) + ["env_id", "resume", "eval_only"]
        if changed := [k for k in vars(saved) if k not in control and getattr(args, k) != getattr(saved, k)]:
            how = "with --eval-only" if args.eval_only else "when a run continues"
            flags = ", ".join("--" + k.replace("_", "-") for k in control[:-3])
            fail(f"--{changed[0].replace('_', '-')} cannot change {how} (only {flags} can)")
    for loss, name in LOSS_PARAMETER.items():  # only the chosen loss's parameter is set
        if getattr(args, name) is not None and loss != args.critic_loss:
            fail(f"--{name.replace('_', '-')} belongs to --critic-loss {loss}, not {args.critic_loss}")
    domain, loss_parameter = domain_of(dataset_id), LOSS_PARAMETER[args.critic_loss]
    defaults = {k: v for k, v in DOMAIN_DEFAULTS[domain].items() if getattr(args, k) is None}  # flags unset
    defaults = {k: v for k, v in defaults.items() if k == loss_parameter or k not in LOSS_PARAMETER.values()}
    args = replace(args, env_id=dataset_id, **defaults)
    compilers = [os.environ.get("CXX") or "g++", "clang++"]  # --compile builds C++ kernels
    if args.compile and not args.eval_only and not any(map(shutil.which, compilers)):
        fail("--compile needs a C++ compiler (g++, clang++ or $CXX): install one, or drop --compile")
    stamp = f"{dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{time.time():.0f}"
    run_name = args.run_name or stamp  # the default: a new run
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume else f"{args.runs_dir}/{run_name}"
    parent = next(p for p in [Path(run_dir).absolute(), *Path(run_dir).absolute().parents] if p.exists())
    if not args.eval_only and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        fail(f"cannot make {run_dir}: {parent} is not a writable folder; give another --runs-dir")

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.torch_deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)

    dataset = load_minari_dataset(dataset_id)
    make_env = lambda: make_eval_env(dataset, dataset_id, domain, args.relabel)  # noqa: E731
    env = make_env()
    goal, dense = (env.goal, env.dense) if isinstance(env, RelabelledGoal) else (None, False)  # the goal cell
    obs_dim = len(flat_observation(env.observation_space.sample(), domain))
    act_dim = len(env.action_space.low)
    action_scale = (env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32))
    ref_scores = tuple(dataset.storage.metadata.get(f"ref_{k}_score") for k in ("min", "max"))
    env.close()
    actor_shape = (args.actor_hidden_dim, args.actor_num_blocks, args.actor_dropout_rate)
    actor = ScoreNetwork(obs_dim, act_dim, *actor_shape).to(device)
    actor_ema = copy.deepcopy(actor).requires_grad_(False).eval()  # samples the actions, without dropout
    qf = TwinQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
    vf = ValueNetwork(obs_dim, args.hidden_dim).to(device)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    betas = vp_beta_schedule(args.diffusion_steps).to(device)
    alpha_hats = torch.cumprod(1 - betas, 0)

    def policy(obs, generator):  # Algorithm 2 with the EMA score network and the target critic
        selection = (args.num_samples, args.selection, args.critic_loss, getattr(args, loss_parameter))
        return idql_actions(obs, actor_ema, qf_target, vf, betas, *selection, generator)

    eval_args = (make_env, args.eval_episodes, args.seed + 100_000, domain, device, action_scale, ref_scores)

    if args.eval_only:
        for name, module in dict(actor_ema=actor_ema, qf_target=qf_target, vf=vf).items():
            module.load_state_dict(ckpt[name])
        summary = summary_of(evaluate(policy, *eval_args))
        setting = f"checkpoint step {ckpt['step']} | episodes {args.eval_episodes} | N {args.num_samples}"
        print(f"eval-only {dataset_id} | {setting} {args.selection} | {summary} | seed {args.seed}")
        raise SystemExit(0)

    data = torch.as_tensor(load_transitions(dataset, domain, goal, dense, action_scale), device=device)
    if max(args.critic_batch_size, args.actor_batch_size) > len(data):
        sizes = f"--critic-batch-size {args.critic_batch_size} / --actor-batch-size {args.actor_batch_size}"
        fail(f"{sizes} exceed the dataset ({len(data)} transitions); lower them")
    actor_optimizer = Adam(actor, args.actor_lr, decay_steps=args.actor_steps)
    qf_optimizer, vf_optimizer = Adam(qf, args.critic_lr), Adam(vf, args.value_lr)
    modules = dict(actor=actor, actor_ema=actor_ema, qf=qf, qf_target=qf_target, vf=vf)
    modules |= dict(actor_optimizer=actor_optimizer, qf_optimizer=qf_optimizer, vf_optimizer=vf_optimizer)

    # TRY NOT TO MODIFY: run directory, resume, logging
    total_steps = max(args.critic_steps, args.actor_steps)
    start_step, evaluations = (ckpt["step"], ckpt["evaluations"]) if args.resume else (0, [])
    if args.resume:  # the run goes on in the checkpoint's directory; evaluations after its step are redone
        for name, module in modules.items():
            module.load_state_dict(ckpt[name])
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt["rng_cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
    try:
        os.makedirs(run_dir, exist_ok=bool(args.resume or args.run_name))
    except FileExistsError:  # a new run's folder is its own: another one started in the same second
        os.makedirs(run_dir := f"{run_dir}_{os.getpid()}")
    args = replace(args, run_name=(run_name := os.path.basename(run_dir)))
    since = f" from step {start_step} ({args.resume})" if args.resume else ""
    print(f"{'continuing' if args.resume else 'starting'} {run_name}{since}; its files go to {run_dir}")
    write_evaluations(os.path.join(run_dir, "evaluations.csv"), evaluations)  # as the checkpoint has it
    info = dict(script="idql.py", total_steps=total_steps, args=asdict(replace(args, resume=None)))
    Path(run_dir, "run.json").write_text(json.dumps(info, indent=1))  # what ran, for benchmark/results.py
    writer = SummaryWriter(run_dir, purge_step=start_step + 1 if start_step else 0)
    print(f"IDQL on {dataset_id} ({domain}, {len(data)} transitions, obs {obs_dim}, act {act_dim}), {device}")
    print("  " + "  ".join(f"{k}={v}" for k, v in asdict(args).items() if k not in ("resume", "eval_only")))

    def save_checkpoint(step):  # to a temporary file, then renamed: never a truncated checkpoint
        path = os.path.join(run_dir, f"checkpoint_{step}.pt")
        state = {name: module.state_dict() for name, module in modules.items()}
        state |= dict(format=CHECKPOINT_FORMAT, step=step, run_name=run_name, dataset_id=dataset_id)
        state |= dict(args=asdict(replace(args, resume=None)), obs_dim=obs_dim, act_dim=act_dim)
        rng_cuda = torch.cuda.get_rng_state() if device.type == "cuda" else None
        state |= dict(evaluations=evaluations, rng_cpu=torch.get_rng_state(), rng_cuda=rng_cuda)
        try:
            torch.save(state, path + ".tmp")
            os.replace(path + ".tmp", path)
        except (OSError, RuntimeError) as e:  # a full disk: no partial file left, the earlier ones kept
            Path(path + ".tmp").unlink(missing_ok=True)
            fail(f"cannot write {path} (a full disk? {str(e).splitlines()[0][:80]}); the last good "
                 f"checkpoint is {last_checkpoint or 'none: none was written before'}")  # fmt: skip
        return path

    @torch.no_grad()  # gradients are taken where they are needed, by value_and_grad
    def critic_update(b: Batch):
        # ALGO LOGIC: V towards the chosen statistic of the target twin-Q's minimum, Eq. (6)
        target_q = qf_target(b.observations, b.actions).min(0).values

        def vf_loss_fn(vf):
            v = vf(b.observations)
            return value_loss(target_q - v, args), v

        (vf_loss, v), grads = value_and_grad(vf_loss_fn, vf)
        vf_optimizer.step(grads)

        # ALGO LOGIC: both Q heads regress r + γ (1 − terminal) V(s') with the new V, Eq. (2); Polyak update
        target = b.rewards + args.gamma * b.masks * vf(b.next_observations)

        def qf_loss_fn(qf):
            q = qf(b.observations, b.actions)
            return (q - target).square().mean(1).sum(), q

        (qf_loss, q), grads = value_and_grad(qf_loss_fn, qf)
        qf_optimizer.step(grads)
        polyak_update(qf_target, qf, args.tau)
        return torch.stack([vf_loss, qf_loss, q.mean(), v.mean(), (target_q - v).mean()])

    @torch.no_grad()
    def actor_update(b: Batch):
        # ALGO LOGIC: behaviour cloning by DDPM's noise-prediction loss, Eq. (4), t uniform; the EMA follows
        t = torch.randint(args.diffusion_steps, (len(b.actions),), device=device)
        noise = torch.randn_like(b.actions)

        def actor_loss_fn(actor):
            eps_pred = actor(noisy_actions(b.actions, noise, alpha_hats[t]), b.observations, t)
            return ddpm_loss(eps_pred, noise), eps_pred

        (actor_loss, _), grads = value_and_grad(actor_loss_fn, actor)
        actor_optimizer.step(grads)
        polyak_update(actor_ema, actor, args.ema_rate)
        return actor_loss

    # --compile: each update as one graph; fullgraph=True makes any split an error, not a silent slowdown
    critic_step = torch.compile(critic_update, fullgraph=True) if args.compile else critic_update
    actor_step = torch.compile(actor_update, fullgraph=True) if args.compile else actor_update
    stop_requested, stopping = [], False  # Ctrl-C, and SLURM's preemption and time-limit warning: finish the
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):  # step, checkpoint, exit with 128 + signal
        signal.signal(signum, lambda signum, _: stop_requested.append(signum))

    def pace(step):  # updates/s and the time left, evaluations included, since this process started
        rate = (step - start_step) / (time.perf_counter() - started)
        return f"{rate:6.0f} updates/s | ETA {datetime.timedelta(seconds=(total_steps - step) // rate)}"

    last_checkpoint, step, log_step, log_time = args.resume, start_step, start_step, time.perf_counter()
    started = shown = log_time  # progress: redrawn every 2 s in a terminal, a line every 30 s in a log file
    refresh, end = (2, "\x1b[K\r") if sys.stdout.isatty() else (30, "\n")
    critic_metrics, actor_loss = torch.full((5,), math.nan), torch.tensor(math.nan)  # until their first step
    for step in range(start_step + 1, total_steps + 1):
        # ALGO LOGIC: the critic and the actor are independent; each runs for its own number of steps
        if step <= args.critic_steps:
            idx = torch.randint(len(data), (args.critic_batch_size,), device=device)
            critic_metrics = critic_step(to_batch(data[idx], obs_dim, act_dim))
        if step <= args.actor_steps:
            idx = torch.randint(len(data), (args.actor_batch_size,), device=device)
            actor_loss = actor_step(to_batch(data[idx], obs_dim, act_dim))
        if time.perf_counter() - shown > refresh:
            print(f"step {step:>8}/{total_steps} | {pace(step)}", end=end, flush=True)
            shown = time.perf_counter()

        is_eval = step % args.eval_interval == 0 or step == total_steps
        is_ckpt = args.save_model and (step % args.checkpoint_interval == 0 or step == total_steps)
        stopping = bool(stop_requested)  # a signal from here on is seen after the evaluation or the next step
        if step % args.log_interval == 0 or is_eval or is_ckpt or stopping:  # NaN check first
            metrics = critic_metrics.tolist()
            metrics.insert(2, actor_loss.item())  # the V, Q and actor losses, then the values
            training = [step <= args.critic_steps] * 2 + [step <= args.actor_steps]  # those still updating
            if not np.isfinite(metrics[:3])[training].all():
                kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "none was saved"
                fail(f"non-finite loss by step {step} (V, Q, actor: {metrics[:3]}); training stopped "
                     f"and {kept}. Lower the learning rates or check the dataset's scale")  # fmt: skip
            now = time.perf_counter()
            sps = (step - log_step) / (now - log_time)
            learning_rate = actor_optimizer.learning_rate(actor_optimizer.step_count).item()
            for name, value in zip(METRICS, metrics + [sps, learning_rate]):
                writer.add_scalar(name, value, step)
            log_step, log_time = step, now
        if is_eval:
            result = evaluate(policy, *eval_args)
            for name, value in result.items():
                if value is not None:
                    writer.add_scalar(EVAL_TAGS.get(name, f"eval/{name}"), value, step)
            evaluations.append(dict(step=step, **result))
            write_evaluations(os.path.join(run_dir, "evaluations.csv"), evaluations)
            print(f"step {step:>8}/{total_steps} | {summary_of(result)} | {pace(step)}")
            log_time = shown = time.perf_counter()  # evaluation time is not training time (charts/SPS)
            stopping = bool(stop_requested)  # a signal during the evaluation: this step's checkpoint
        if is_ckpt or (args.save_model and stopping):
            last_checkpoint = save_checkpoint(step)
        if stopping:
            break

    writer.close()
    print(evaluations_summary(evaluations, os.path.join(run_dir, "evaluations.csv")))
    if stopping:  # the same command (with --run-name) or --resume continues the run
        how = f"continue with: python idql.py --resume {last_checkpoint}" if args.save_model else "none saved"
        print(f"interrupted by {signal.Signals(stop_requested[0]).name} at step {step}; {how}")
        raise SystemExit(128 + stop_requested[0])
