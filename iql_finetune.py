"""Implicit Q-Learning (IQL): offline pre-training on a Minari dataset, then online fine-tuning in its environment.

Paper: "Offline Reinforcement Learning with Implicit Q-Learning", Ilya Kostrikov, Ashvin Nair, Sergey Levine,
ICLR 2022, arXiv:2110.06169, section 5.3 (online fine-tuning after offline RL). Reference code: the authors'
train_finetune.py and configs/antmaze_finetune_config.py (ikostrikov/implicit_q_learning): one replay buffer that
starts with the whole dataset, `num_pretraining_steps` updates on it, then one environment step and one update per
step; exploration samples the learned Gaussian, clipped to [-1, 1]; the bootstrap mask is 0 only on a true
termination; AntMaze rewards are r - 1 on offline and online data alike; no learning-rate decay in either phase.
The IQL update itself is iql.py's (V, AWR actor, twin Q in that order, orthogonal init, Polyak 0.005).

Deviations from the reference:
- Data comes from Minari, not D4RL. Mazes are relabelled against the eval goal as in iql.py (reward = terminal = 1
  within 0.5 of the goal cell's centre; `--no-relabel` keeps Minari's own), and the online env is the eval env made
  episodic (`continuing_task=False`). Dense PointMaze datasets (`*-dense-v2`) get D4RL's dense reward exp(-distance)
  instead of the 0/1 success, offline and online alike (the terminal is still distance <= 0.5).
- Maze scoring: D4RL ended an AntMaze episode with success within 0.5 of a goal offset from the goal cell's centre
  by 0 to 0.375 x maze scale per axis (drawn once per env in v0/v1, per episode in v2). Here evaluation and online
  episodes end with success, reward and terminal within 0.5 of the goal cell's centre, the goal the data is
  relabelled to; not within 0.45 of Gymnasium-Robotics' goal, which moves by up to ±0.25 x maze scale per axis at
  every reset (±1.0 on AntMaze). With `--no-relabel`, Minari's own goal, reward and success are used. Score = 100 x
  success rate.
- Actions are mapped from the action space's [low, high] to [-1, 1] (the reference assumes D4RL's [-1, 1]; some
  Minari `mujoco/*` envs differ): in the data, in the buffer's online transitions, and back when acting in the env.
- Locomotion reward scaling (r · 1000 / (max - min episode return)) applies to every `mujoco/*` dataset whose episode
  returns differ, and online rewards get the same factor; the reference scales D4RL's halfcheetah, hopper and walker2d
  datasets only, so its online rewards live on another scale.
- PointMaze (maze2d) is not in the paper; it takes the AntMaze settings. AntMaze umaze uses the data env's own maze.
- Every evaluation of a run uses the same seeded start states (seed + 100000 + episode), not one continuing stream.
- `--load-model` starts from an iql.py checkpoint (the reference has no such entry point); its Adam moments are
  kept and every learning rate is reset to its flag's constant value (iql.py's actor rate has decayed to ~0).
- One environment, no vector env: acting costs ~0.8 ms a step (PointMaze, CPU) against ~10 ms per update, so
  stepping several envs at once would not speed up a loop that makes one update per env step.
- Steps count offline updates, then online env steps after them (the reference numbers pretraining steps below 0);
  evaluation envs are separate from the training env, so an evaluation never cuts a training episode.
- Checkpoints of the online phase hold the online transitions still in the buffer (the offline part is rebuilt
  from the dataset), so a resumed run has the same buffer; the episode in progress is not continued.
"""

import csv
import difflib
import os
import random
import re
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
    exp_name: str = "iql_finetune"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (sampling, network init, training env); evaluation episodes use seed + 100000 onwards"""
    torch_deterministic: bool = True
    """make CUDA runs repeatable (deterministic cuDNN/cuBLAS kernels, a little slower); CPU runs are repeatable anyway"""
    cuda: bool = True
    """train on CUDA when it is available"""
    compile: bool = False
    """torch.compile the update step (a minute of compiling first; pays off on long runs)"""
    env_id: Optional[str] = None
    """a Minari dataset id or its D4RL name (default antmaze-medium-diverse-v0; --resume/--load-model: the checkpoint's)"""
    relabel: bool = True
    """mazes: relabel offline and online rewards and terminals against the eval goal cell's centre as D4RL did, and
    score success there; --no-relabel keeps Minari's own rewards, goal and success"""
    offline_steps: Optional[int] = None
    """gradient steps on the offline data before going online (default 1000000; not allowed with --load-model)"""
    online_steps: int = 1_000_000
    """environment steps of the online phase, one gradient step each"""
    buffer_size: int = 2_000_000
    """replay buffer capacity (offline data plus online transitions; the oldest are evicted first when full)"""
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
    """actor learning rate (constant in both phases, as in the reference's fine-tuning config)"""
    critic_lr: float = 3e-4
    """Q learning rate"""
    value_lr: float = 3e-4
    """V learning rate"""
    hidden_dim: int = 256
    """width of the two hidden layers of every network (with --load-model: the checkpoint's)"""
    eval_interval: Optional[int] = None
    """evaluate every this many steps, and always after the offline phase (per-domain default: mazes 100000, others 5000)"""
    eval_episodes: Optional[int] = None
    """episodes per evaluation (per-domain default: mazes 100, others 10)"""
    log_interval: int = 1000
    """write losses, values and speeds to tensorboard every this many steps"""
    save_model: bool = True
    """write checkpoints (periodic, final and on Ctrl-C) under runs/{run_name}/"""
    save_buffer: bool = True
    """put the online transitions into checkpoints of the online phase, so that --resume restores the buffer"""
    checkpoint_interval: int = 100_000
    """write a checkpoint every this many steps (offline and online steps count alike)"""
    load_model: Optional[str] = None
    """path of an iql.py checkpoint to fine-tune online (skips the offline phase; unset expectile, temperature and
    dropout are taken from it)"""
    resume: Optional[str] = None
    """path of an iql_finetune.py checkpoint to continue its run from (same hyperparameters, same run directory)"""
    runs_dir: str = "runs"
    """where run directories (tensorboard events, checkpoints) are created"""


DEFAULT_ENV_ID = "antmaze-medium-diverse-v0"
DEFAULT_OFFLINE_STEPS = 1_000_000
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
ACTION_EPS = 1e-5  # dataset actions are clipped to ±(1 − ACTION_EPS) so their log-likelihood stays finite
GOAL_RADIUS = 0.5  # D4RL's AntMaze/Maze2d success radius, used for relabelling
UMAZE_EVAL_MAP = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, "r", 0, 0, 1], [1, 1, 1, 1, 1]]
CHECKPOINT_FORMAT = "iql_finetune.py checkpoint v1"
IQL_CHECKPOINT_FORMAT = "iql.py checkpoint v2"

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
MUJOCO |= {e: ["medium", "expert"] for e in ["inverteddoublependulum", "invertedpendulum", "pusher", "reacher", "swimmer"]}
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
    print(f"iql_finetune.py: error: {message}", file=sys.stderr)
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
    """(reward, terminal) of both phases: terminal within GOAL_RADIUS of the eval goal cell's centre; reward 1 there and
    0 elsewhere, or exp(−distance) for dense datasets (as D4RL's maze2d-*-dense)."""
    distance = np.linalg.norm(np.asarray(achieved_goal) - goal, axis=-1)
    reached = distance <= GOAL_RADIUS
    return (np.exp(-distance) if dense else reached).astype(np.float32), reached


def env_action(action: np.ndarray, action_scale) -> np.ndarray:
    """An action of the networks' [−1, 1] mapped to the env's [low, high] (episode_transitions maps the other way)."""
    low, high = action_scale
    return low + (action + 1.0) * (high - low) / 2.0


def online_flags(terminated: bool, truncated: bool) -> tuple:
    """(bootstrap mask, episode over) of one env step: the mask is 0 only on a true termination (for mazes, the
    relabelled goal: RelabelledGoal); a time limit only ends the episode."""
    return 1.0 - float(terminated), bool(terminated or truncated)


def reward_scale_shift(episode_returns: np.ndarray, domain: str) -> tuple:
    """The paper's reward preprocessing as r · scale + shift, applied to offline and online rewards alike:
    mazes r − 1; locomotion r · 1000 / (max − min episode return); otherwise none."""
    if domain in ("antmaze", "pointmaze"):
        return 1.0, -1.0
    if domain == "locomotion" and np.ptp(episode_returns) > 1e-6:  # all returns equal: nothing to normalise
        return 1000.0 / float(np.ptp(episode_returns)), 0.0
    return 1.0, 0.0


def episode_transitions(episode, domain: str, goal: Optional[np.ndarray], dense: bool = False, action_scale=(-1.0, 1.0)):
    """(obs, actions, rewards, next_obs, masks) of one Minari episode; with `goal`, rewards and terminals are relabelled.
    Actions are mapped from the env's [low, high] to [−1, 1]."""
    obs = flat_observation(episode.observations, domain).astype(np.float32)
    rewards, terminals = np.asarray(episode.rewards, np.float32), np.asarray(episode.terminations, bool)
    if goal is not None:
        rewards, terminals = relabel(episode.observations["achieved_goal"][1:], goal, dense)
    masks = 1.0 - terminals.astype(np.float32)  # a time-limit truncation is not a terminal
    low, high = action_scale
    actions = 2.0 * (np.asarray(episode.actions, np.float32) - low) / (high - low) - 1.0
    actions = np.clip(actions, -1 + ACTION_EPS, 1 - ACTION_EPS).astype(np.float32)
    return obs[:-1], actions, rewards, obs[1:], masks


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


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """target ← (1 − τ) target + τ source, outside autograd (else every step links the target into one growing graph)."""
    for p_t, p in zip(target.parameters(), source.parameters()):
        p_t.lerp_(p, tau)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; mean, exp(log_std)²) summed over action dimensions (no tanh squashing, as in the reference)."""
    return (-0.5 * ((actions - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


class ReplayBuffer:
    """A ring of `capacity` transitions on the training device, one row each (obs, action, reward, next obs, mask):
    the offline dataset is written first, online transitions after it, and the oldest row is overwritten once full."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device):
        self.widths = [obs_dim, act_dim, 1, obs_dim, 1]
        self.rows = torch.zeros(capacity, sum(self.widths), device=device)
        self.capacity, self.size, self.ptr, self.online_added = capacity, 0, 0, 0

    def add(self, observations, actions, rewards, next_observations, masks, online: bool = True):
        parts = [observations, actions, rewards, next_observations, masks]
        parts = [np.asarray(p, np.float32).reshape(len(rewards), -1) for p in parts]
        self.add_rows(torch.as_tensor(np.concatenate(parts, 1)), online)

    def add_rows(self, rows: torch.Tensor, online: bool = True):
        if len(rows) == 0:
            return
        if len(rows) > self.capacity:
            raise ValueError(f"{len(rows)} transitions do not fit in a buffer of {self.capacity}")
        idx = (self.ptr + torch.arange(len(rows))) % self.capacity
        self.rows[idx.to(self.rows.device)] = rows.to(self.rows.device)
        self.ptr, self.size = int(idx[-1] + 1) % self.capacity, min(self.size + len(rows), self.capacity)
        self.online_added += len(rows) if online else 0

    def batch(self, idx) -> Batch:
        obs, act, rew, next_obs, mask = self.rows[idx].split(self.widths, dim=1)
        return Batch(obs, act, rew.squeeze(1), next_obs, mask.squeeze(1))

    def sample(self, batch_size: int) -> Batch:
        return self.batch(torch.randint(self.size, (batch_size,), device=self.rows.device))

    def online_rows(self) -> torch.Tensor:
        """The online transitions still in the buffer, oldest first (what a checkpoint needs besides the dataset)."""
        n = min(self.online_added, self.size)
        return self.rows[(self.ptr - n + torch.arange(n, device=self.rows.device)) % self.capacity]


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
    """Q1 and Q2 with their weights stacked on a leading axis of 2 (iql.py's layout, so its checkpoints load)."""

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
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        reason = str(e).splitlines()[0][:160] if str(e) else ""
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
    """The dataset's eval env, also the online training env. Mazes are made episodic (an episode ends at the goal) and,
    if `relabelled`, judged at the relabelling goal (RelabelledGoal); without it, by Minari's own goal and success."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    if domain not in ("antmaze", "pointmaze"):
        return dataset.recover_environment(eval_env=True)
    kwargs = dict(continuing_task=False, reset_target=False)
    if dataset_id.startswith("D4RL/antmaze/umaze"):
        kwargs["maze_map"] = UMAZE_EVAL_MAP
    env = dataset.recover_environment(eval_env=True, **kwargs)
    return RelabelledGoal(env, dense=dataset_id.endswith("-dense-v2")) if relabelled else env


def load_transitions(dataset, domain: str, goal: Optional[np.ndarray], dense: bool, action_scale) -> tuple:
    """The whole dataset as arrays (rewards preprocessed) and the (scale, shift) that online rewards get too."""
    parts = [episode_transitions(ep, domain, goal, dense, action_scale) for ep in dataset.iterate_episodes()]
    obs, actions, rewards, next_obs, masks = (np.concatenate(x) for x in zip(*parts))
    scale, shift = reward_scale_shift(np.array([p[2].sum() for p in parts]), domain)
    data = dict(observations=obs, actions=actions, rewards=rewards * scale + shift, next_observations=next_obs, masks=masks)
    for k, v in data.items():
        if not np.isfinite(v).all():
            fail(f"the dataset's {k} contain NaN or inf; repair or re-download the dataset")
    return data, (scale, shift)


@torch.no_grad()
def evaluate(actor, make_env, n_episodes: int, seed: int, domain: str, device, action_scale, n_envs: int = 25) -> dict:
    """Deterministic (mean) actions on `n_episodes` seeded episodes, several envs stepped side by side. The same seeds
    every time: every evaluation of a run starts from the same states, so successive scores differ by the policy only."""
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
            for i, action in zip(live, env_action(mean.clamp(-1, 1).cpu().numpy(), action_scale)):
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


def load_iql_adam_state(optimizer: torch.optim.Adam, module: nn.Module, saved: dict):
    """iql.py's own Adam stores {step, exp_avg: {name: tensor}, exp_avg_sq: {name: tensor}}; hand them to torch's."""
    for name, param in module.named_parameters():
        if saved["exp_avg"][name].shape != param.shape:
            raise RuntimeError(f"the optimiser state of {name} does not match the network")
        optimizer.state[param] = dict(
            step=saved["step"].detach().clone().to(torch.float32),
            exp_avg=saved["exp_avg"][name].detach().clone(),
            exp_avg_sq=saved["exp_avg_sq"][name].detach().clone(),
        )


def load_checkpoint(path: str, device, expected_format: str, flag: str) -> dict:
    """A checkpoint of `expected_format`, or a one-line error naming the flag and what to pass instead."""
    writer_script = expected_format.split()[0]
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        fail(f"{flag}: no checkpoint at '{path}'; give the path of a checkpoint_<step>.pt file written by {writer_script}")
    except Exception as e:
        fail(
            f"{flag}: cannot read checkpoint '{path}' ({type(e).__name__}); the file is corrupt or not a torch checkpoint. "
            f"Use another checkpoint_<step>.pt from the same run directory."
        )
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found != expected_format:
        hint = {CHECKPOINT_FORMAT: " (continue it with --resume)", IQL_CHECKPOINT_FORMAT: " (fine-tune it with --load-model)"}
        fail(
            f"{flag}: '{path}' is not an {writer_script} checkpoint (format {found!r}, expected '{expected_format}')"
            f"{hint.get(found, '')}"
        )
    return ckpt


def save_checkpoint(path: str, state: dict):
    """Write to a temporary file, then rename: a crash mid-write never leaves a truncated checkpoint behind."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def check_args(args: Args):
    checks = [
        (0 < args.expectile < 1, f"--expectile must be in (0, 1), got {args.expectile} (paper: 0.7, 0.9)"),
        (args.temperature > 0, f"--temperature must be > 0, got {args.temperature} (paper: 0.5 to 10)"),
        (0 <= args.dropout_rate < 1, f"--dropout-rate must be in [0, 1), got {args.dropout_rate}"),
        (0 < args.gamma <= 1, f"--gamma must be in (0, 1], got {args.gamma}"),
        (0 < args.tau <= 1, f"--tau must be in (0, 1], got {args.tau}"),
        (args.exp_adv_max > 0, f"--exp-adv-max must be > 0, got {args.exp_adv_max}"),
        (min(args.actor_lr, args.critic_lr, args.value_lr) > 0, "learning rates must be > 0"),
        (args.offline_steps >= 0 and args.online_steps >= 0, "--offline-steps and --online-steps must be >= 0"),
        (args.offline_steps + args.online_steps > 0, "--offline-steps and --online-steps are both 0: nothing to do"),
        (min(args.buffer_size, args.batch_size, args.hidden_dim) > 0, "--buffer-size, --batch-size, --hidden-dim must be > 0"),
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
    if args.resume and args.load_model:
        fail("--resume continues an iql_finetune.py run with its own networks; drop --load-model")
    if args.load_model and args.offline_steps is not None:
        fail("--load-model skips the offline phase (the iql.py checkpoint is the offline result); drop --offline-steps")
    ckpt = load_checkpoint(args.resume, device, CHECKPOINT_FORMAT, "--resume") if args.resume else None
    pretrained = load_checkpoint(args.load_model, device, IQL_CHECKPOINT_FORMAT, "--load-model") if args.load_model else None
    import minari  # noqa: E402  (after argument parsing, so that --help and bad flags answer at once)

    source, source_path = (ckpt, args.resume) if ckpt else (pretrained, args.load_model)
    dataset_id = args.env_id or (source["dataset_id"] if source else DEFAULT_ENV_ID)
    dataset_id = resolve_dataset_id(dataset_id, set(minari.list_local_datasets()))
    if source and dataset_id != source["dataset_id"]:
        fail(f"'{source_path}' was trained on '{source['dataset_id']}', not '{dataset_id}'; drop --env-id or pass that one")
    if args.resume:  # the same run goes on: its hyperparameters, not today's defaults
        args = replace(Args(**ckpt["args"]), resume=args.resume, cuda=args.cuda)
    elif pretrained:
        saved = pretrained["args"]
        if args.relabel != saved.get("relabel", True):
            fail(
                f"the checkpoint was trained with relabel={saved.get('relabel')}, this run has relabel={args.relabel}: "
                f"its Q and V would mean another reward; use the same --relabel/--no-relabel"
            )
        inherited = {k: saved[k] for k in ("expectile", "temperature", "dropout_rate") if getattr(args, k) is None}
        args = replace(args, offline_steps=0, hidden_dim=saved["hidden_dim"], **inherited)  # unset: as pre-trained
    elif args.offline_steps is None:
        args = replace(args, offline_steps=DEFAULT_OFFLINE_STEPS)
    domain = domain_of(dataset_id)
    args = replace(args, env_id=dataset_id, **{k: v for k, v in DOMAIN_DEFAULTS[domain].items() if getattr(args, k) is None})
    check_args(args)
    total_steps = args.offline_steps + args.online_steps

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
    if source and (source["obs_dim"], source["act_dim"]) != (obs_dim, act_dim):
        fail(f"'{source_path}' has obs/act dims {source['obs_dim']}/{source['act_dim']}, the env {obs_dim}/{act_dim}")

    # ALGO LOGIC: the replay buffer starts with the whole offline dataset (rewards preprocessed as online ones will be)
    dense = dataset_id.endswith("-dense-v2")
    data, (reward_scale, reward_shift) = load_transitions(dataset, domain, goal, dense, action_scale)
    n_offline = len(data["rewards"])
    if n_offline > args.buffer_size:
        fail(f"the dataset ({n_offline} transitions) does not fit in --buffer-size {args.buffer_size}; raise it")
    if args.batch_size > n_offline:
        fail(f"--batch-size {args.batch_size} is larger than the dataset ({n_offline} transitions); lower it")
    buffer = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)
    buffer.add(*(data[k] for k in Batch._fields), online=False)
    del data

    actor = Actor(obs_dim, act_dim, args.hidden_dim, args.dropout_rate).to(device)
    qf, vf = TwinQNetwork(obs_dim, act_dim, args.hidden_dim).to(device), ValueNetwork(obs_dim, args.hidden_dim).to(device)
    qf_target = TwinQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
    qf_target.load_state_dict(qf.state_dict())
    qf_target.requires_grad_(False)
    fused = dict(fused=True) if device.type in ("cuda", "cpu") else {}
    learning_rates = [(actor, args.actor_lr), (qf, args.critic_lr), (vf, args.value_lr)]
    actor_optimizer, qf_optimizer, vf_optimizer = (
        torch.optim.Adam(m.parameters(), lr=lr, **fused) for m, lr in learning_rates
    )
    modules = dict(
        actor=actor,
        qf=qf,
        qf_target=qf_target,
        vf=vf,
        actor_optimizer=actor_optimizer,
        qf_optimizer=qf_optimizer,
        vf_optimizer=vf_optimizer,
    )
    for name, module in modules.items() if source else []:
        if source is pretrained and name.endswith("_optimizer"):  # iql.py keeps Adam's moments by parameter name
            load_iql_adam_state(module, modules[name.removesuffix("_optimizer")], source[name])
        else:
            module.load_state_dict(source[name])
    # ALGO LOGIC: constant learning rates while fine-tuning (iql.py's actor rate has been cosine-decayed to ~0)
    for optimizer, (_, lr) in zip([actor_optimizer, qf_optimizer, vf_optimizer], learning_rates):
        optimizer.param_groups[0]["lr"] = lr

    # TRY NOT TO MODIFY: run directory, resume, logging
    start_step, episodes = 0, 0
    if ckpt:
        start_step, episodes, run_name = ckpt["step"], ckpt["episodes"], ckpt["run_name"]
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
        note = ""
        if start_step > args.offline_steps:
            if ckpt.get("online_rows") is not None:
                buffer.add_rows(ckpt["online_rows"])
                buffer.online_added = ckpt["online_added"]  # counts evicted online rows too
                note = f"; buffer restored: {n_offline} offline + {len(ckpt['online_rows'])} online rows"
            else:
                note = (
                    f"; this checkpoint holds no online transitions (--no-save-buffer), so the buffer restarts "
                    f"from the offline data alone, without the {ckpt['online_added']} online transitions collected"
                )
            note += "; the episode in progress is dropped and a new one starts"
        print(f"resuming run {run_name} at step {start_step}/{total_steps} from {args.resume}{note}")
    else:
        run_name = f"{dataset_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join(args.runs_dir, run_name)
        if pretrained:
            print(f"fine-tuning {args.load_model} (iql.py, step {pretrained['step']}); the offline phase is skipped")
    os.makedirs(run_dir, exist_ok=True)
    evaluations_csv = os.path.join(run_dir, "evaluations.csv")
    if args.resume:  # like tensorboard's purge_step: evaluations after the checkpoint are redone
        keep_evaluations_until(evaluations_csv, start_step)
    writer = SummaryWriter(run_dir, purge_step=start_step + 1 if start_step else None)
    hyperparameters = {**asdict(args), "dataset_transitions": n_offline, "device": str(device)}
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hyperparameters.items()))
    print(
        f"IQL fine-tuning on {dataset_id} ({domain}, {n_offline} transitions, obs {obs_dim}, act {act_dim}) on {device}: "
        f"{args.offline_steps} offline + {args.online_steps} online steps"
    )
    print("  " + "  ".join(f"{k}={v}" for k, v in asdict(args).items() if k not in ("resume",)))

    def checkpoint(step: int) -> str:
        path = os.path.join(run_dir, f"checkpoint_{step}.pt")
        rng_cuda = torch.cuda.get_rng_state() if device.type == "cuda" else None
        online_rows = buffer.online_rows().cpu() if args.save_buffer and step > args.offline_steps else None
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
                episodes=episodes,
                online_added=buffer.online_added,
                online_rows=online_rows,
                rng_cpu=torch.get_rng_state(),
                rng_cuda=rng_cuda,
                **{name: module.state_dict() for name, module in modules.items()},
            ),
        )
        return path

    def update(b: Batch) -> torch.Tensor:
        # ALGO LOGIC: 1. V towards an upper expectile of the target twin-Q's minimum, Eq. (5)
        with torch.no_grad():
            target_q = qf_target(b.observations, b.actions).min(0).values
        v = vf(b.observations)
        vf_loss = expectile_loss(target_q - v, args.expectile)
        gradient_step(vf_optimizer, vf_loss)

        # ALGO LOGIC: the freshly updated V gives both the advantage (actor) and V(s') (Q target)
        with torch.no_grad():
            v_obs, next_v = vf(torch.cat([b.observations, b.next_observations])).split(len(b.rewards))
            advantage = target_q - v_obs
            weights = awr_weights(advantage, args.temperature, args.exp_adv_max)
            target = td_target(b.rewards, b.masks, next_v, args.gamma)

        # ALGO LOGIC: 2. advantage-weighted regression of the policy, Eq. (7)
        mean, log_std = actor(b.observations)
        actor_loss = -(weights * gaussian_log_prob(mean, log_std, b.actions)).mean()
        gradient_step(actor_optimizer, actor_loss)

        # ALGO LOGIC: 3. both Q heads regress r + γ V(s'), Eq. (6); 4. Polyak update of the target
        q = qf(b.observations, b.actions)
        qf_loss = (q - target).square().mean(1).sum()
        gradient_step(qf_optimizer, qf_loss)
        polyak_update(qf_target, qf, args.tau)
        return torch.stack([vf_loss, actor_loss, qf_loss, q.mean(), v.mean(), advantage.mean()]).detach()

    def report(step: int, speeds: str):
        """Evaluate, log to tensorboard and print the terminal line."""
        result = evaluate(
            actor,
            lambda: make_eval_env(dataset, dataset_id, domain, args.relabel),
            args.eval_episodes,
            eval_seed,
            domain,
            device,
            action_scale,
        )
        score = score_of(result, domain, ref_scores)
        writer.add_scalar("eval/return", result["returns"].mean(), step)
        writer.add_scalar("eval/success_rate", result["successes"].mean(), step)
        if score is not None:
            writer.add_scalar("eval/normalized_score", score, step)
        row = dict(step=step, score=score, success_rate=result["successes"].mean(), mean_return=result["returns"].mean())
        distance = ""
        if is_maze:  # the number to look at when a maze score is zero
            writer.add_scalar("eval/goal_distance", result["goal_distances"].mean(), step)
            row["goal_distance"] = result["goal_distances"].mean()
            distance = f" | goal distance {row['goal_distance']:5.2f}"
        append_evaluation(evaluations_csv, row)
        phase = f"online {step - args.offline_steps}/{args.online_steps}"
        if step <= args.offline_steps or step == 0:
            phase = f"offline {step}/{args.offline_steps}" if args.offline_steps else "loaded model"
        recent = f"{np.mean(recent_returns):.2f} over {len(recent_returns)}" if recent_returns else "n/a"
        print(
            f"step {step:>8}/{total_steps} {phase} | score {'n/a' if score is None else f'{score:6.1f}'} | "
            f"success {result['successes'].mean():.2f} | return {result['returns'].mean():9.2f}{distance} | "
            f"episodes {episodes} (return {recent}) | {speeds}",
            flush=True,
        )

    update_step = torch.compile(update) if args.compile else update
    stop_requested = []
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))  # finish the step, then checkpoint and exit

    eval_seed, env, recent_returns = args.seed + 100_000, None, []
    last_good_checkpoint, step = None, start_step
    log_time, log_step, env_time, env_steps_logged = time.perf_counter(), start_step, 0.0, 0
    train_time, updates_per_s, env_steps_per_s = 0.0, float("nan"), float("nan")
    if start_step == 0 and args.offline_steps == 0:
        report(0, "before fine-tuning")  # the loaded model's offline score
    for step in range(start_step + 1, total_steps + 1):
        if step > args.offline_steps:
            if env is None:  # ALGO LOGIC: the online env is the eval env; seeded apart from evaluation
                env = make_eval_env(dataset, dataset_id, domain, args.relabel)
                obs = flat_observation(env.reset(seed=args.seed + episodes)[0], domain)
                ep_return, ep_length, ep_success = 0.0, 0, False
            t0 = time.perf_counter()
            with torch.no_grad():  # ALGO LOGIC: explore with a sample of the learned Gaussian, clipped to the action box
                actor.eval()
                mean, log_std = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
                actor.train()
                action = (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1, 1).cpu().numpy()
            next_o, reward, terminated, truncated, info = env.step(env_action(action, action_scale))  # buffer: [−1, 1]
            next_obs = flat_observation(next_o, domain)
            # ALGO LOGIC: mazes: RelabelledGoal gives the offline data's relabelled reward and terminal
            mask, episode_over = online_flags(terminated, truncated)
            buffer.add(obs[None], action[None], [float(reward) * reward_scale + reward_shift], next_obs[None], [mask])
            ep_return, ep_length = ep_return + reward, ep_length + 1
            ep_success |= bool(info.get("success", False))
            obs = next_obs
            if episode_over:
                episodes += 1
                recent_returns = (recent_returns + [ep_return])[-10:]
                for name, value in [("return", ep_return), ("length", ep_length), ("success", float(ep_success))]:
                    writer.add_scalar(f"charts/episodic_{name}", value, step)
                obs = flat_observation(env.reset()[0], domain)
                ep_return, ep_length, ep_success = 0.0, 0, False
            env_time += time.perf_counter() - t0
            env_steps_logged += 1

        metrics = update_step(buffer.sample(args.batch_size))

        is_eval = step % args.eval_interval == 0 or step == args.offline_steps or step == total_steps
        is_ckpt = args.save_model and step % args.checkpoint_interval == 0
        if step % args.log_interval == 0 or is_eval or is_ckpt or stop_requested:  # checked before any checkpoint
            vf_loss, actor_loss, qf_loss, q_mean, v_mean, adv_mean = metrics.tolist()
            if not np.isfinite([vf_loss, actor_loss, qf_loss]).all():
                kept = f"the last good checkpoint is {last_good_checkpoint}" if last_good_checkpoint else "none was written"
                fail(
                    f"non-finite loss by step {step} (vf {vf_loss}, actor {actor_loss}, qf {qf_loss}); training stopped and "
                    f"{kept}. Lower the learning rates or check the dataset's scale."
                )
            now = time.perf_counter()
            train_time += now - log_time
            updates_per_s = (step - log_step) / max(now - log_time, 1e-9)  # one update per step, env time included online
            if env_steps_logged:
                env_steps_per_s = env_steps_logged / max(env_time, 1e-9)  # acting and env.step alone
            log_step, log_time, env_time, env_steps_logged = step, now, 0.0, 0
            for name, value in [
                ("losses/vf_loss", vf_loss),
                ("losses/actor_loss", actor_loss),
                ("losses/qf_loss", qf_loss),
                ("values/q", q_mean),
                ("values/v", v_mean),
                ("values/advantage", adv_mean),
                ("charts/SPS", updates_per_s),
                ("charts/updates_per_s", updates_per_s),
                ("charts/learning_rate", actor_optimizer.param_groups[0]["lr"]),
            ]:
                writer.add_scalar(name, value, step)
            if step > args.offline_steps:
                writer.add_scalar("charts/env_steps_per_s", env_steps_per_s, step)
        if is_eval:
            speed = (step - start_step) / max(train_time, 1e-9)
            eta = time.strftime("%H:%M:%S", time.gmtime((total_steps - step) / speed))
            report(step, f"{updates_per_s:6.0f} updates/s | {env_steps_per_s:6.0f} env steps/s | ETA {eta}")
            log_time = time.perf_counter()  # evaluation time is not training time
        if is_ckpt or (args.save_model and (step == total_steps or stop_requested)):
            last_good_checkpoint = checkpoint(step)
        if stop_requested:
            break

    if env is not None:
        env.close()
    if stop_requested:
        resume = f"continue: python iql_finetune.py --resume {last_good_checkpoint}" if args.save_model else "--no-save-model"
        print(f"interrupted at step {step}; {resume}")
    elif args.save_model:
        print(f"final checkpoint: {last_good_checkpoint}")
    writer.close()
    print(evaluations_summary(evaluations_csv))
