"""Small Minari datasets written under the real remote ids, so the scripts load them exactly as they would
load a download. Spaces, env ids and env kwargs mirror Minari's remote catalogue
(../shared/reference/minari_remote_datasets.txt); only the number of steps is small.

The datasets are made once per pytest session in a temporary MINARI_DATASETS_PATH that every subprocess inherits.
"""

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import farama_notifications
import gymnasium as gym
import numpy as np
import pytest
import torch

farama_notifications.notifications.pop("gymnasium_robotics", None)  # its Adroit notice: no test uses door/hammer/relocate
import gymnasium_robotics  # noqa: E402

gym.register_envs(gymnasium_robotics)

ROOT = Path(__file__).resolve().parents[1]
# Tests run the scripts on one thread: the tiny networks gain little from a second one, a second thread slows torch
# several-fold whenever another process holds a core, and one thread makes every run's numbers repeatable.
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
os.environ.update(SINGLE_THREAD)  # for every subprocess, those started with Popen too
torch.set_num_threads(1)

ANTMAZE_MEDIUM = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 0, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]


def _with_cells(maze, cells):
    """A copy of `maze` with {(row, col): 'g' | 'r' | 'c'} written in."""
    maze = [list(row) for row in maze]
    for (i, j), c in cells.items():
        maze[i][j] = c
    return maze


U_MAZE = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]

# (env id, max_episode_steps, kwargs) of the data env and the eval env, as in Minari's remote metadata.
SPECS = {
    "D4RL/antmaze/medium-diverse-v1": (
        (
            "AntMaze_Medium_Diverse_GR-v4",
            1000,
            dict(
                maze_map=_with_cells(ANTMAZE_MEDIUM, {(1, 1): "c", (2, 6): "c", (5, 1): "c", (6, 5): "c"}),
                reward_type="sparse",
                continuing_task=True,
                reset_target=False,
            ),
        ),
        (
            "AntMaze_Medium_Diverse_GR-v4",
            1000,
            dict(
                maze_map=_with_cells(ANTMAZE_MEDIUM, {(1, 1): "r", (6, 6): "g"}),
                reward_type="sparse",
                continuing_task=True,
                reset_target=False,
            ),
        ),
    ),
    "D4RL/antmaze/umaze-v1": (
        (
            "AntMaze_UMaze-v4",
            700,
            dict(
                maze_map=_with_cells(U_MAZE, {(1, 1): "g", (3, 1): "r"}),
                reward_type="sparse",
                continuing_task=True,
                reset_target=False,
            ),
        ),
        # Minari's umaze eval env has the mirrored map (the quirk SPEC §4 names); kept as it is remotely.
        (
            "AntMaze_UMaze-v4",
            700,
            dict(
                maze_map=_with_cells(U_MAZE, {(1, 3): "r", (3, 3): "g"}),
                reward_type="sparse",
                continuing_task=True,
                reset_target=False,
            ),
        ),
    ),
    "D4RL/pointmaze/umaze-v2": (
        ("PointMaze_UMaze-v3", 1000000, dict(maze_map=U_MAZE, reward_type="sparse", continuing_task=True, reset_target=True)),
        (
            "PointMaze_UMaze-v3",
            300,
            dict(maze_map=_with_cells(U_MAZE, {(1, 1): "g"}), reward_type="sparse", continuing_task=True, reset_target=False),
        ),
    ),
    "mujoco/hopper/medium-v0": (("Hopper-v5", 1000, {}), None),
    "D4RL/pen/human-v2": (("AdroitHandPen-v1", 200, dict(reward_type="dense")), None),
}
# D4RL's reference scores for pen (random and expert policy returns), which Minari's pen datasets carry.
REF_SCORES = {"D4RL/pen/human-v2": (96.262799, 3076.8331017826877)}


def make_env(spec):
    env_id, max_steps, kwargs = spec
    return gym.make(env_id, max_episode_steps=max_steps, **kwargs)


def _stack(obs_list):
    if isinstance(obs_list[0], dict):
        return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}
    return np.stack(obs_list)


def _buffer(obs, actions, rewards, terminations, truncations):
    from minari.data_collector import EpisodeBuffer

    return EpisodeBuffer(
        observations=_stack(obs),
        actions=np.asarray(actions, dtype=np.float32),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations),
        truncations=np.asarray(truncations),
    )


def random_episodes(env, n_episodes, seed, max_len=None):
    """Episodes of a uniformly random policy, ended by the env (or cut at max_len, as a truncation)."""
    episodes = []
    env.action_space.seed(seed)
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        buf = dict(obs=[obs], actions=[], rewards=[], terminations=[], truncations=[])
        while True:
            a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            trunc = trunc or (max_len is not None and len(buf["actions"]) + 1 >= max_len)
            for k, v in zip(["obs", "actions", "rewards", "terminations", "truncations"], [obs, a, r, term, trunc]):
                buf[k].append(v)
            if term or trunc:
                break
        episodes.append(_buffer(buf["obs"], buf["actions"], buf["rewards"], buf["terminations"], buf["truncations"]))
    return episodes


def pointmaze_waypoint_episodes(env, total_steps, seed, noise_std=0.5):
    """PointMaze data the way Minari/D4RL made it: a BFS planner over maze cells gives the next waypoint, a PD controller
    `clip(10·(waypoint − pos) − 1·vel, −1, 1)` plus Gaussian noise drives the point, the task is continuing with a new
    goal on each arrival, and the stream is cut into episodes at each arrival (truncation)."""
    rng = np.random.default_rng(seed)
    maze = env.unwrapped.maze
    free = {(i, j) for i, row in enumerate(maze.maze_map) for j, c in enumerate(row) if c != 1}

    def next_waypoint(pos, goal):
        start, target = tuple(maze.cell_xy_to_rowcol(pos)), tuple(maze.cell_xy_to_rowcol(goal))
        if start == target or start not in free:
            return goal
        dist, queue = {target: 0}, deque([target])
        while queue:
            i, j = queue.popleft()
            for n in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if n in free and n not in dist:
                    dist[n] = dist[(i, j)] + 1
                    queue.append(n)
        i, j = start
        best = min(((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)), key=lambda n: dist.get(n, 1e9))
        return goal if best == target else maze.cell_rowcol_to_xy(np.array(best))

    episodes, obs = [], env.reset(seed=seed)[0]
    buf = dict(obs=[obs], actions=[], rewards=[], terminations=[], truncations=[])
    for t in range(total_steps):
        pos, vel = obs["observation"][:2], obs["observation"][2:]
        goal = env.unwrapped.goal.copy()
        a = np.clip(10.0 * (next_waypoint(pos, goal) - pos) - 1.0 * vel, -1, 1)
        a = np.clip(a + noise_std * rng.standard_normal(2), -1, 1).astype(np.float32)
        obs, r, term, _, info = env.step(a)
        arrived = bool(info["success"])
        trunc = arrived or t == total_steps - 1
        for k, v in zip(["obs", "actions", "rewards", "terminations", "truncations"], [obs, a, r, term, trunc]):
            buf[k].append(v)
        if trunc:
            episodes.append(_buffer(buf["obs"], buf["actions"], buf["rewards"], buf["terminations"], buf["truncations"]))
            buf = dict(obs=[obs], actions=[], rewards=[], terminations=[], truncations=[])
    return episodes


def write_dataset(dataset_id, episodes):
    import minari

    data_spec, eval_spec = SPECS[dataset_id]
    env = make_env(data_spec)
    eval_env = make_env(eval_spec) if eval_spec else None
    minari.create_dataset_from_buffers(
        dataset_id,
        episodes,
        env=env.spec,
        eval_env=eval_env.spec if eval_env else None,
        algorithm_name="tests/conftest.py",
        description="small local test dataset",
        data_format="hdf5",
    )
    if dataset_id in REF_SCORES:
        ds = minari.load_dataset(dataset_id)
        ds.storage.update_metadata(dict(zip(["ref_min_score", "ref_max_score"], REF_SCORES[dataset_id])))


def build_all(root):
    """Write every test dataset under `root` (an absolute MINARI_DATASETS_PATH)."""
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    for i, dataset_id in enumerate(["D4RL/antmaze/medium-diverse-v1", "D4RL/antmaze/umaze-v1"]):
        env = make_env(SPECS[dataset_id][0])
        write_dataset(dataset_id, random_episodes(env, 4, seed=10 * i, max_len=150))
    env = make_env(SPECS["D4RL/pointmaze/umaze-v2"][0])
    write_dataset("D4RL/pointmaze/umaze-v2", pointmaze_waypoint_episodes(env, 30_000, seed=0))
    for dataset_id in ["mujoco/hopper/medium-v0", "D4RL/pen/human-v2"]:
        env = make_env(SPECS[dataset_id][0])
        write_dataset(dataset_id, random_episodes(env, 30 if "hopper" in dataset_id else 6, seed=1, max_len=100))


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    """An absolute MINARI_DATASETS_PATH holding the test datasets; set for this process and its subprocesses."""
    root = tmp_path_factory.mktemp("minari").resolve()
    build_all(root)
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"  # a dataset that is not there fails at once instead of after ~20 s of retries
    return root


def run_script(script, *args, cwd, timeout=600, check=True, env=None):
    """Run `python <script> args...` from `cwd` and return the CompletedProcess (stdout and stderr as text)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **SINGLE_THREAD, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


MAZES = ["D4RL/antmaze/medium-diverse-v1", "D4RL/antmaze/umaze-v1", "D4RL/pointmaze/umaze-v2"]


def assert_success_is_judged_at_the_goal_cell_centre(env, seeds=range(50)):
    """After each seeded reset, an agent put at rest on the goal cell's centre succeeds (success, terminal, reward 1) and
    one 0.6 from it, towards a free neighbouring cell (a point inside a wall would be pushed out), does not; whatever
    goal Gymnasium-Robotics drew at reset (it moves it by up to ±0.25 x maze scale per axis: ±1.0 on AntMaze)."""
    import mujoco

    maze, centre = env.unwrapped.maze, env.unwrapped.maze.unique_goal_locations[0]
    directions = [np.array(d) for d in ([1, 0], [-1, 0], [0, 1], [0, -1])]
    cells = np.array(maze.maze_map, dtype=object)
    free = [d for d in directions if cells[tuple(maze.cell_xy_to_rowcol(centre + maze.maze_size_scaling * d))] != 1]
    sim = getattr(env.unwrapped, "ant_env", None) or env.unwrapped.point_env
    for seed in seeds:
        for xy, expected in [(centre, True), (centre + 0.6 * free[0], False)]:
            env.reset(seed=seed)
            sim.data.qpos[:2], sim.data.qvel[:] = xy, 0.0
            mujoco.mj_forward(sim.model, sim.data)
            obs, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape))
            assert info["success"] is expected and terminated is expected and reward == float(expected), (seed, xy)
            assert np.linalg.norm(obs["desired_goal"] - centre) == 0.0


if __name__ == "__main__":  # python tests/conftest.py DIR: the test datasets in DIR, for docs/ figures or a first try
    build_all(Path(sys.argv[1]).resolve())
