"""Implicit Q-Learning (IQL), offline, on Minari datasets.

Paper: "Offline Reinforcement Learning with Implicit Q-Learning", Ilya Kostrikov, Ashvin Nair, Sergey Levine,
ICLR 2022, arXiv:2110.06169. Reference code: the authors' JAX implementation (ikostrikov/implicit_q_learning):
one batch per step shared by the V, actor and Q updates in that order, orthogonal init (gain sqrt 2), a Gaussian
policy with tanh-bounded mean and a free log-std, cosine decay of the actor's learning rate, Polyak 0.005.

Deviations from the reference:
- Data comes from Minari, not D4RL (retired). AntMaze and PointMaze datasets are relabelled against the eval goal,
  as D4RL's were (reward = terminal = 1 within 0.5 of the goal cell's centre; `--no-relabel` keeps Minari's own).
- Maze scoring: D4RL ended an AntMaze episode with success within 0.5 of a goal offset from the goal cell's centre
  by 0 to 0.375 x maze scale per axis (drawn once per env in v0/v1, per episode in v2). Here an episode ends with
  success within 0.5 of the goal cell's centre, the goal the data is relabelled to; not within 0.45 of Gymnasium-
  Robotics' goal, which moves by up to ±0.25 x maze scale per axis at every reset (±1.0 on AntMaze). With
  `--no-relabel`, Minari's own goal and success are used. Score = 100 x success rate.
- AntMaze umaze: Minari's eval env has a mirrored map; we evaluate on the data env's own U-maze and goal.
- PointMaze (maze2d) is not in the paper; it takes the AntMaze settings (expectile 0.9, temperature 10, r - 1).
  Dense PointMaze datasets (`*-dense-v2`) get D4RL's dense reward exp(−distance) instead of the 0/1 success.
- Actions are mapped from the action space's [low, high] to [−1, 1] (the reference assumes D4RL's [−1, 1]; some
  Minari `mujoco/*` envs differ) and back at evaluation.
- Locomotion reward scaling (r · 1000 / (max − min episode return)) applies to every `mujoco/*` dataset whose episode
  returns differ (the reference scales D4RL's halfcheetah, hopper and walker2d).
- Every evaluation of a run uses the same seeded start states (seed + 100000 + episode), not one continuing stream.

Implementation notes (same math as the reference): the twin Q is one network with a leading axis of 2, so each layer
is one batched matmul for both heads; V(s) for the actor and V(s') for the Q target come from one forward pass.
Gradients come from `value_and_grad` and Adam is the script's own (torch.optim.Adam's math and fused kernel), so that
`--compile` can capture the whole update as one graph.
"""

import csv
import difflib
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = "iql"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (data sampling, network init); evaluation episodes use seed + 100000 onwards"""
    torch_deterministic: bool = True
    """make CUDA runs repeatable (deterministic cuDNN/cuBLAS kernels, a little slower); CPU runs are repeatable anyway"""
    cuda: bool = True
    """train on CUDA when it is available"""
    compile: bool = False
    """torch.compile the whole update as one graph (needs g++/clang++; ~20 s of compiling, then 1.2-1.5x eager on CPU)"""
    env_id: Optional[str] = None
    """a Minari dataset id or its D4RL name (default antmaze-medium-diverse-v0; with --resume/--eval-only: the checkpoint's)"""
    relabel: bool = True
    """mazes: relabel rewards and terminals against the eval goal cell's centre as D4RL did, and score success there;
    --no-relabel keeps Minari's own rewards, goal and success"""
    total_steps: int = 1_000_000
    """number of gradient steps"""
    batch_size: int = 256
    """transitions per gradient step"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target Q network"""
    expectile: Optional[float] = None
    """expectile of the V loss, in (0, 1) (per-domain default: AntMaze 0.9, others 0.7)"""
    temperature: Optional[float] = None
    """inverse temperature of the AWR weights, > 0 (per-domain default: AntMaze 10, locomotion 3, Adroit/Kitchen 0.5)"""
    dropout_rate: Optional[float] = None
    """dropout after each hidden layer of the actor (per-domain default: Adroit/Kitchen 0.1, others 0)"""
    exp_adv_max: float = 100.0
    """clip of the AWR weights exp(temperature * advantage)"""
    actor_lr: float = 3e-4
    """actor learning rate (cosine-decayed to 0 over total_steps)"""
    critic_lr: float = 3e-4
    """Q learning rate"""
    value_lr: float = 3e-4
    """V learning rate"""
    hidden_dim: int = 256
    """width of the two hidden layers of every network"""
    eval_interval: Optional[int] = None
    """evaluate every this many steps (per-domain default: mazes 100000, others 5000)"""
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
    """path of a checkpoint to evaluate, without training"""
    runs_dir: str = "runs"
    """where run directories (tensorboard events, checkpoints) are created"""


DEFAULT_ENV_ID = "antmaze-medium-diverse-v0"
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
ACTION_EPS = 1e-5  # dataset actions are clipped to ±(1 − ACTION_EPS) so their log-likelihood stays finite
GOAL_RADIUS = 0.5  # D4RL's AntMaze/Maze2d success radius, used for relabelling
UMAZE_EVAL_MAP = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, "r", 0, 0, 1], [1, 1, 1, 1, 1]]
CHECKPOINT_FORMAT = "iql.py checkpoint v2"
RUN_CONTROL = (
    "cuda",
    "compile",
    "eval_interval",
    "eval_episodes",
    "log_interval",
    "save_model",
    "checkpoint_interval",
    "runs_dir",
)

# The paper's one setting per domain (appendix B); eval cadence as the authors ran it.
DOMAIN_DEFAULTS = {
    "antmaze": dict(expectile=0.9, temperature=10.0, dropout_rate=0.0, eval_interval=100_000, eval_episodes=100),
    "pointmaze": dict(expectile=0.9, temperature=10.0, dropout_rate=0.0, eval_interval=100_000, eval_episodes=100),
    "locomotion": dict(expectile=0.7, temperature=3.0, dropout_rate=0.0, eval_interval=5000, eval_episodes=10),
    "kitchen": dict(expectile=0.7, temperature=0.5, dropout_rate=0.1, eval_interval=5000, eval_episodes=10),
    "adroit": dict(expectile=0.7, temperature=0.5, dropout_rate=0.1, eval_interval=5000, eval_episodes=10),
}

# Minari's remote catalogue (the datasets this script knows how to read) and the D4RL names that map onto it.
ANTMAZES = ["umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"]
POINTMAZES = [f"{m}{d}" for m in ["open", "umaze", "medium", "large"] for d in ["", "-dense"]]
KITCHENS = ["complete", "partial", "mixed"]
ADROIT = [f"{t}-{q}" for t in ["pen", "door", "hammer", "relocate"] for q in ["human", "cloned", "expert"]]
MUJOCO = {
    e: ["simple", "medium", "expert"] for e in ["ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "walker2d"]
}
MUJOCO.update(
    {e: ["medium", "expert"] for e in ["inverteddoublependulum", "invertedpendulum", "pusher", "reacher", "swimmer"]}
)
D4RL_TO_MINARI = {
    **{f"antmaze-{m}-v{v}": f"D4RL/antmaze/{m}-v1" for m in ANTMAZES for v in range(3)},
    **{f"maze2d-{m}-v{v}": f"D4RL/pointmaze/{m}-v2" for m in POINTMAZES for v in range(2)},
    **{f"kitchen-{m}-v0": f"D4RL/kitchen/{m}-v2" for m in KITCHENS},
    **{f"{a}-v{v}": "D4RL/{}/{}-v2".format(*a.split("-")) for a in ADROIT for v in range(2)},
}
MINARI_IDS = sorted(set(D4RL_TO_MINARI.values()) | {f"mujoco/{e}/{q}-v0" for e, qs in MUJOCO.items() for q in qs})
D4RL_LOCOMOTION = re.compile(
    r"^(halfcheetah|hopper|walker2d|ant)-(random|medium|medium-replay|medium-expert|expert|full-replay)-v\d$"
)


class Batch(NamedTuple):
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    masks: torch.Tensor  # 1 − terminal: the bootstrap mask


def fail(message: str):
    """Stop with a one-line error (exit status 2, as for a bad flag) that says what to do."""
    print(f"iql.py: error: {message}", file=sys.stderr)
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
    # A time-limit truncation is not a terminal: the bootstrap mask comes from terminations alone.
    masks = 1.0 - terminals.astype(np.float32)
    low, high = action_scale
    actions = 2.0 * (np.asarray(episode.actions, np.float32) - low) / (high - low) - 1.0
    actions = np.clip(actions, -1 + ACTION_EPS, 1 - ACTION_EPS)
    return obs[:-1], actions, rewards, obs[1:], masks


def preprocess_rewards(rewards: np.ndarray, episode_returns: np.ndarray, domain: str) -> np.ndarray:
    """The paper's reward preprocessing: mazes r − 1; locomotion r · 1000 / (max − min episode return); else none."""
    if domain in ("antmaze", "pointmaze"):
        return rewards - 1.0
    if domain == "locomotion" and np.ptp(episode_returns) > 1e-6:  # all returns equal: nothing to normalise
        return rewards * 1000.0 / np.ptp(episode_returns)
    return rewards


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Eq. (5): L_2^τ(u) = |τ − 1(u < 0)| u², with u = Q(s, a) − V(s)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def awr_weights(advantage: torch.Tensor, temperature: float, exp_adv_max: float) -> torch.Tensor:
    """Eq. (7): exp(β · (Q − V)), clipped from above so that a few large advantages cannot dominate the batch."""
    return torch.exp(advantage * temperature).clamp(max=exp_adv_max)


def td_target(rewards: torch.Tensor, masks: torch.Tensor, next_v: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. (6): r + γ · (1 − terminal) · V(s'); V, not a max over actions, so no out-of-dataset action is queried."""
    return rewards + gamma * masks * next_v


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; mean, exp(log_std)²) summed over action dimensions (no tanh squashing, as in the reference)."""
    return (-0.5 * ((actions - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


@torch.no_grad()  # the target is a running average, not part of any graph
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """θ̂ ← (1 − τ) θ̂ + τ θ."""
    for param_target, param in zip(target.parameters(), source.parameters()):
        param_target.lerp_(param, tau)


class Adam:
    """Adam (Kingma & Ba, 2015; torch.optim.Adam's defaults) for one network, optionally with the cosine decay of the
    learning rate to 0 that IQL gives the actor. Its own class, with the step count a tensor, so that `--compile` can
    capture the whole update (gradients, three optimisers, Polyak) as one graph: torch.optim's step() splits a graph."""

    def __init__(self, module: nn.Module, lr: float, decay_steps: int = 0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = dict(module.named_parameters())
        self.lr, self.decay_steps, self.betas, self.eps = lr, decay_steps, betas, eps
        self.state = dict(
            step=torch.zeros((), device=next(module.parameters()).device),
            exp_avg={name: torch.zeros_like(p) for name, p in self.params.items()},
            exp_avg_sq={name: torch.zeros_like(p) for name, p in self.params.items()},
        )
        # the same tensors as lists, once (load_state_dict copies into them in place, so they stay valid)
        self.exp_avgs, self.exp_avg_sqs = list(self.state["exp_avg"].values()), list(self.state["exp_avg_sq"].values())

    def learning_rate(self, step: torch.Tensor) -> torch.Tensor:
        """The rate of update number step + 1: lr, or lr · ½(1 + cos(π · step / decay_steps)) (optax's cosine decay)."""
        if not self.decay_steps:
            return torch.full_like(step, self.lr)
        return self.lr * 0.5 * (1 + torch.cos(math.pi * step.clamp(max=self.decay_steps) / self.decay_steps))

    @torch.no_grad()
    def step(self, grads: dict):
        beta1, beta2 = self.betas
        t = self.state["step"].add_(1)
        lr = self.learning_rate(t - 1)
        params, grads = list(self.params.values()), [grads[name] for name in self.params]
        exp_avgs, exp_avg_sqs = self.exp_avgs, self.exp_avg_sqs
        if torch.compiler.is_compiling():  # the math, for the compiler to fuse with the rest of the update
            step_size, bias_correction2_sqrt = lr / (1 - beta1**t), (1 - beta2**t).sqrt()
            for param, grad, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
                m.lerp_(grad, 1 - beta1)  # m ← β1 m + (1 − β1) g
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v ← β2 v + (1 − β2) g²
                param.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + self.eps))  # θ ← θ − lr · m̂ / (√v̂ + ε)
        else:  # eager: the same math in one call to the kernel torch.optim.Adam(fused=True) runs (the loop: +0.5 ms)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], [t] * len(params), lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)  # fmt: skip

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict):
        """Copy in place (a compiled update holds on to these very tensors); a mismatch raises like nn.Module's."""
        ours, saved = self.flat(self.state), self.flat(state)
        if saved.keys() != ours.keys() or any(saved[k].shape != ours[k].shape for k in ours):
            raise RuntimeError("the optimiser state does not match the network")
        for k, tensor in ours.items():
            tensor.copy_(saved[k])

    @staticmethod
    def flat(state: dict) -> dict:
        return dict(step=state["step"], **{f"{k}.{n}": t for k in ("exp_avg", "exp_avg_sq") for n, t in state[k].items()})


def value_and_grad(loss_fn, module: nn.Module):
    """Evaluate loss_fn(net) -> (loss, aux), where net(*inputs) runs `module`; return (loss, aux) and the gradient of
    loss w.r.t. the module's parameters as {name: tensor}, leaving every .grad alone.
    Eager runs use plain autograd. Under torch.compile it is torch.func.grad, which the compiler traces into the same
    graph as the rest of the update (loss.backward() and torch.autograd.grad would split it); eager torch.func was
    measured ~20% slower than autograd here, hence the two paths for the one gradient."""
    params = dict(module.named_parameters())
    if torch.compiler.is_compiling():
        loss_of = lambda p: loss_fn(lambda *inputs: torch.func.functional_call(module, p, inputs))  # noqa: E731
        grads, (loss, aux) = torch.func.grad_and_value(loss_of, has_aux=True)(params)
        return (loss, aux), grads
    with torch.enable_grad():
        loss, aux = loss_fn(module)
        grads = torch.autograd.grad(loss, list(params.values()))
    return (loss.detach(), aux.detach()), dict(zip(params, grads))


def orthogonal_(weight: torch.Tensor, bias: torch.Tensor):
    nn.init.orthogonal_(weight, gain=np.sqrt(2))
    nn.init.zeros_(bias)


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


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, dropout_rate: float):
        super().__init__()
        self.fc1, self.fc2, self.fc_mean = nn.Linear(obs_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, act_dim)
        for fc in (self.fc1, self.fc2, self.fc_mean):
            orthogonal_(fc.weight, fc.bias)
        self.dropout = nn.Dropout(dropout_rate)
        self.log_std = nn.Parameter(torch.zeros(act_dim))  # state-independent, as in the reference

    def forward(self, obs):
        x = self.dropout(F.relu(self.fc1(obs)))
        x = self.dropout(F.relu(self.fc2(x)))
        return torch.tanh(self.fc_mean(x)), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def load_minari_dataset(dataset_id: str):
    import minari

    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # a missing dataset offline surfaces as a network error from the hub client
        root, reason = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets"), (str(e) or "-").splitlines()[0][:160]
        fail(
            f"cannot load Minari dataset '{dataset_id}' ({type(e).__name__}: {reason}). "
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
    episode_returns = np.array([p[2].sum() for p in parts])
    rewards = preprocess_rewards(rewards, episode_returns, domain)
    data = dict(observations=obs, actions=actions, rewards=rewards, next_observations=next_obs, masks=masks)
    for k, v in data.items():
        if not np.isfinite(v).all():
            fail(f"the dataset's {k} contain NaN or inf; repair or re-download the dataset")
    return data


def load_checkpoint(path: str, device) -> dict:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        fail(f"no checkpoint at '{path}'; give the path of a checkpoint_<step>.pt file written by iql.py")
    except Exception as e:
        fail(
            f"cannot read checkpoint '{path}' ({type(e).__name__}); the file is corrupt or not a torch checkpoint. "
            f"Use another checkpoint_<step>.pt from the same run directory."
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fail(f"'{path}' is not an iql.py checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return ckpt


def save_checkpoint(path: str, state: dict):
    """Write to a temporary file, then rename: a crash mid-write never leaves a truncated checkpoint behind."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def check_args(args: Args):
    checks = [
        (
            0 < args.expectile < 1,
            f"--expectile must be in (0, 1), got {args.expectile} (0.5 is plain regression; paper: 0.7, 0.9)",
        ),
        (args.temperature > 0, f"--temperature must be > 0, got {args.temperature} (paper: 0.5 to 10)"),
        (0 <= args.dropout_rate < 1, f"--dropout-rate must be in [0, 1), got {args.dropout_rate}"),
        (0 < args.gamma <= 1, f"--gamma must be in (0, 1], got {args.gamma}"),
        (0 < args.tau <= 1, f"--tau must be in (0, 1], got {args.tau}"),
        (args.exp_adv_max > 0, f"--exp-adv-max must be > 0, got {args.exp_adv_max}"),
        (min(args.actor_lr, args.critic_lr, args.value_lr) > 0, "learning rates must be > 0"),
        (
            min(args.total_steps, args.batch_size, args.hidden_dim) > 0,
            "--total-steps, --batch-size and --hidden-dim must be > 0",
        ),
        (
            min(args.eval_interval, args.eval_episodes, args.log_interval, args.checkpoint_interval) > 0,
            "--eval-interval, --eval-episodes, --log-interval and --checkpoint-interval must be > 0",
        ),
        (
            not args.compile or any(shutil.which(cxx) for cxx in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if cxx),
            "--compile needs a C++ compiler (g++ or clang++; or set CXX) to build its kernels; install one, or drop "
            "--compile (eager PyTorch computes the same update, more slowly)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            fail(message)


@torch.no_grad()
def evaluate(actor, make_env, n_episodes: int, seed: int, domain: str, device, action_scale, n_envs: int = 25) -> dict:
    """Deterministic (mean) actions on `n_episodes` seeded episodes, several envs stepped side by side. The same seeds
    every time: every evaluation of a run starts from the same states, so successive scores differ by the policy only."""
    low, high = action_scale
    actor.eval()
    envs = [make_env() for _ in range(min(n_envs, n_episodes))]
    returns, successes, distances = [], [], []
    for first in range(0, n_episodes, len(envs)):
        batch = envs[: n_episodes - first]
        raw = [env.reset(seed=seed + first + i)[0] for i, env in enumerate(batch)]
        ret, success, alive = np.zeros(len(batch)), np.zeros(len(batch), bool), np.ones(len(batch), bool)
        while alive.any():
            live = np.flatnonzero(alive)
            obs = np.stack([flat_observation(raw[i], domain) for i in live])
            mean, _ = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
            for i, action in zip(live, low + (mean.clamp(-1, 1).cpu().numpy() + 1.0) * (high - low) / 2.0):
                raw[i], r, terminated, truncated, info = batch[i].step(action)
                ret[i] += r
                success[i] |= bool(info.get("success", False))
                alive[i] = not (terminated or truncated)
        returns += ret.tolist()
        successes += success.tolist()
        distances += [np.linalg.norm(o["achieved_goal"] - o["desired_goal"]) if isinstance(o, dict) else np.nan for o in raw]
    for env in envs:
        env.close()
    actor.train()
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


if __name__ == "__main__":
    args = tyro.cli(Args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    ckpt = load_checkpoint(args.resume or args.eval_only, device) if (args.resume or args.eval_only) else None
    import minari  # noqa: E402  (after argument parsing, so that --help and bad flags answer at once)

    local_ids = set(minari.list_local_datasets())
    dataset_id = resolve_dataset_id(args.env_id or (ckpt["dataset_id"] if ckpt else DEFAULT_ENV_ID), local_ids)
    if ckpt and dataset_id != ckpt["dataset_id"]:
        fail(f"the checkpoint was trained on '{ckpt['dataset_id']}', not '{dataset_id}'; drop --env-id or pass that dataset")
    if args.resume:  # the same run goes on: the checkpoint's values are the defaults, and only run-control flags may change
        saved = Args(**ckpt["args"])
        args = tyro.cli(Args, default=replace(saved, resume=args.resume, env_id=saved.env_id))
        changed = [k for k in asdict(saved) if k not in (*RUN_CONTROL, "resume") and getattr(args, k) != getattr(saved, k)]
        if changed:
            fail(
                f"--{changed[0].replace('_', '-')} cannot change when resuming (the run continues exactly as it started); "
                f"start a new run instead, or change only {', '.join('--' + k.replace('_', '-') for k in RUN_CONTROL)}"
            )
    elif args.eval_only:
        saved = Args(**ckpt["args"])
        args = tyro.cli(Args, default=replace(saved, eval_only=args.eval_only, env_id=saved.env_id))
    domain = domain_of(dataset_id)
    args = replace(args, env_id=dataset_id, **{k: v for k, v in DOMAIN_DEFAULTS[domain].items() if getattr(args, k) is None})
    check_args(args)

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

    actor = Actor(obs_dim, act_dim, args.hidden_dim, args.dropout_rate).to(device)

    def run_evaluation():
        env_fn = lambda: make_eval_env(dataset, dataset_id, domain, args.relabel)  # noqa: E731
        result = evaluate(actor, env_fn, args.eval_episodes, args.seed + 100_000, domain, device, action_scale)
        score = score_of(result, domain, ref_scores)
        summary = (
            f"score {'n/a' if score is None else f'{score:.1f}':>6} | success {result['successes'].mean():.2f} | "
            f"return {result['returns'].mean():9.2f}"
        )
        if is_maze:  # the number to look at when a maze score is zero
            summary += f" | goal distance {result['goal_distances'].mean():5.2f}"
        return result, score, summary

    if args.eval_only:
        actor.load_state_dict(ckpt["actor"])
        summary = run_evaluation()[2]
        print(f"eval-only {dataset_id} | checkpoint step {ckpt['step']} | episodes {args.eval_episodes} | {summary}")
        raise SystemExit(0)

    data = load_transitions(dataset, domain, goal, dataset_id.endswith("-dense-v2"), action_scale)
    n_transitions = len(data["rewards"])
    if args.batch_size > n_transitions:
        fail(f"--batch-size {args.batch_size} is larger than the dataset ({n_transitions} transitions); lower it")
    # The whole dataset on the device, one row per transition (obs | action | reward | next obs | mask): a batch is one gather.
    rows = torch.as_tensor(np.concatenate([data[k].reshape(n_transitions, -1) for k in Batch._fields], 1), device=device)
    row_split = [obs_dim, act_dim, 1, obs_dim, 1]

    qf, vf = TwinQNetwork(obs_dim, act_dim, args.hidden_dim).to(device), ValueNetwork(obs_dim, args.hidden_dim).to(device)
    qf_target = TwinQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
    qf_target.load_state_dict(qf.state_dict())
    qf_target.requires_grad_(False)
    actor_optimizer = Adam(actor, args.actor_lr, decay_steps=args.total_steps)
    qf_optimizer = Adam(qf, args.critic_lr)
    vf_optimizer = Adam(vf, args.value_lr)
    modules = dict(
        actor=actor,
        qf=qf,
        qf_target=qf_target,
        vf=vf,
        actor_optimizer=actor_optimizer,
        qf_optimizer=qf_optimizer,
        vf_optimizer=vf_optimizer,
    )

    # TRY NOT TO MODIFY: run directory, resume, logging
    start_step, last_good_checkpoint = 0, args.resume
    if args.resume:
        for name, module in modules.items():
            module.load_state_dict(ckpt[name])
        start_step, run_name, run_dir = ckpt["step"], ckpt["run_name"], os.path.dirname(os.path.abspath(args.resume))
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
        print(f"resuming run {run_name} at step {start_step}/{args.total_steps} from {args.resume}")
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
    print(f"IQL on {dataset_id} ({domain}, {n_transitions} transitions, obs {obs_dim}, act {act_dim}) on {device}")
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

    @torch.no_grad()  # gradients are taken where they are needed, by value_and_grad
    def update(b: Batch) -> torch.Tensor:
        # ALGO LOGIC: 1. V towards an upper expectile of the target twin-Q's minimum, Eq. (5)
        target_q = qf_target(b.observations, b.actions).min(0).values

        def vf_loss_fn(vf):
            v = vf(b.observations)
            return expectile_loss(target_q - v, args.expectile), v

        (vf_loss, v), grads = value_and_grad(vf_loss_fn, vf)
        vf_optimizer.step(grads)

        # ALGO LOGIC: the freshly updated V gives both the advantage (actor) and V(s') (Q target)
        v_obs, next_v = vf(torch.cat([b.observations, b.next_observations])).split(len(b.rewards))
        advantage = target_q - v_obs
        weights = awr_weights(advantage, args.temperature, args.exp_adv_max)
        target = td_target(b.rewards, b.masks, next_v, args.gamma)

        # ALGO LOGIC: 2. advantage-weighted regression of the policy, Eq. (7)
        def actor_loss_fn(actor):
            mean, log_std = actor(b.observations)
            return -(weights * gaussian_log_prob(mean, log_std, b.actions)).mean(), log_std

        (actor_loss, log_std), grads = value_and_grad(actor_loss_fn, actor)
        actor_optimizer.step(grads)

        # ALGO LOGIC: 3. both Q heads regress r + γ V(s'), Eq. (6); 4. Polyak update of the target
        def qf_loss_fn(qf):
            q = qf(b.observations, b.actions)
            return (q - target).square().mean(1).sum(), q

        (qf_loss, q), grads = value_and_grad(qf_loss_fn, qf)
        qf_optimizer.step(grads)
        polyak_update(qf_target, qf, args.tau)
        return torch.stack([vf_loss, actor_loss, qf_loss, q.mean(), v.mean(), advantage.mean(), log_std.mean()])

    # --compile: one graph for the whole update; fullgraph=True makes any split an error rather than a silent slowdown
    update_step = torch.compile(update, fullgraph=True) if args.compile else update
    stop_requested = []
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))  # finish the step, then checkpoint and exit

    step = start_step
    train_time, log_time, log_step = 0.0, time.perf_counter(), start_step
    for step in range(start_step + 1, args.total_steps + 1):
        idx = torch.randint(n_transitions, (args.batch_size,), device=device)
        obs, actions, rewards, next_obs, masks = rows[idx].split(row_split, 1)
        metrics = update_step(Batch(obs, actions, rewards.squeeze(1), next_obs, masks.squeeze(1)))

        is_eval = step % args.eval_interval == 0 or step == args.total_steps
        is_ckpt = args.save_model and step % args.checkpoint_interval == 0
        if step % args.log_interval == 0 or is_eval or is_ckpt or stop_requested:  # checked before any checkpoint
            vf_loss, actor_loss, qf_loss, q_mean, v_mean, adv_mean, log_std_mean = metrics.tolist()
            if not np.isfinite([vf_loss, actor_loss, qf_loss]).all():
                kept = (
                    f"the last good checkpoint is {last_good_checkpoint}"
                    if last_good_checkpoint
                    else "no checkpoint was written"
                )
                fail(
                    f"non-finite loss by step {step} (vf {vf_loss}, actor {actor_loss}, qf {qf_loss}); training stopped and "
                    f"{kept}. Lower the learning rates or check the dataset's scale."
                )
            now = time.perf_counter()
            train_time += now - log_time
            sps = (step - log_step) / max(now - log_time, 1e-9)
            log_step, log_time = step, now
            for name, value in [
                ("losses/vf_loss", vf_loss),
                ("losses/actor_loss", actor_loss),
                ("losses/qf_loss", qf_loss),
                ("values/q", q_mean),
                ("values/v", v_mean),
                ("values/advantage", adv_mean),
                ("values/policy_log_std", log_std_mean),
                ("charts/SPS", sps),
                ("charts/learning_rate", actor_optimizer.learning_rate(actor_optimizer.state["step"]).item()),
            ]:
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
            eta = time.strftime("%H:%M:%S", time.gmtime((args.total_steps - step) / speed))
            print(f"step {step:>8}/{args.total_steps} | {summary} | {speed:6.0f} updates/s | ETA {eta}", flush=True)
            log_time = time.perf_counter()  # evaluation time is not training time
        if is_ckpt or (args.save_model and (step == args.total_steps or stop_requested)):
            last_good_checkpoint = checkpoint(step)
        if stop_requested:
            break

    if stop_requested:
        resume = f"continue with: python iql.py --resume {last_good_checkpoint}" if args.save_model else "--no-save-model"
        print(f"interrupted at step {step}; {resume}")
    elif args.save_model:
        print(f"final checkpoint: {last_good_checkpoint}")
    writer.close()
    print(evaluations_summary(evaluations_csv))
