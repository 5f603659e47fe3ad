"""Tests for toy_maze.py: hand-checked pieces via importlib, and one short end-to-end run that checks the paper's claim."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "toy_maze.py"
NORTH, SOUTH, WEST, EAST = range(4)
GOAL_REWARD = 10.0  # entering the goal pays 10 and ends the episode (section 5.1)


def load_script():
    spec = importlib.util.spec_from_file_location("toy_maze", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tm():
    return load_script()


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """Fewer iterations with a larger Adam step than the authors' (1e-3, 100k): the tables still settle at their fixed point"""
    workdir = tmp_path_factory.mktemp("toy_maze_run")
    flags = ["--learning-rate", "1e-2", "--total-iterations", "10000", "--batch-size", "256", "--eval-episodes", "200"]
    flags += ["--expectiles", "0.5", "0.95", "--log-interval", "2000", "--seed", "1"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *flags], check=False, cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (workdir / "runs").iterdir()
    return proc, run_dir


def test_import_has_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_script()
    assert list(tmp_path.iterdir()) == []


def test_expectile_loss_by_hand(tm):
    diff = torch.tensor([2.0, -2.0, 0.0])
    assert tm.expectile_loss(diff, torch.tensor(0.9)).tolist() == pytest.approx([0.9 * 4, 0.1 * 4, 0.0])
    assert tm.expectile_loss(diff, torch.tensor(0.5)).tolist() == pytest.approx([2.0, 2.0, 0.0])


def test_value_iteration_deterministic_corridor(tm):
    # cells 0 | 1 | goal 2; reward 10 on entering the goal, gamma 0.9, no noise
    next_state = tm.transition_table(np.zeros((1, 3), dtype=bool))
    assert next_state.tolist()[:2] == [[0, 0, 0, 1], [1, 1, 0, 2]]
    v, q = tm.value_iteration(next_state, goal=2, noise=0.0, gamma=0.9)
    assert v[:2] == pytest.approx([9.0, 10.0])
    assert q[1] == pytest.approx([9.0, 9.0, 8.1, 10.0])  # north/south bump and stay, west goes back to V(0) = 9
    assert q[0] == pytest.approx([8.1, 8.1, 8.1, 9.0])


def test_value_iteration_noisy_corridor(tm):
    # noise 0.25: the commanded move happens w.p. 0.75 + 0.25 / 4 = 0.8125, each other move w.p. 0.0625
    next_state = tm.transition_table(np.zeros((1, 3), dtype=bool))
    v, q = tm.value_iteration(next_state, goal=2, noise=0.25, gamma=0.9)
    # going east is optimal: V0 = 0.9 (0.8125 V1 + 0.1875 V0)  and  V1 = 0.8125 * 10 + 0.9 (0.125 V1 + 0.0625 V0)
    ratio = 0.9 * 0.8125 / (1 - 0.9 * 0.1875)
    v1 = 8.125 / (1 - 0.9 * 0.125 - 0.9 * 0.0625 * ratio)
    assert v[:2] == pytest.approx([ratio * v1, v1], abs=1e-8)
    assert q[:2].argmax(1).tolist() == [EAST, EAST]


def test_v_star_of_the_u_maze_is_the_fixed_point_of_the_bellman_backup(tm):
    """V* and Q* of the default maze satisfy the Bellman optimality equation, written out here cell by cell from the
    walls (not with value_iteration's or transition_table's code): the backup is a γ-contraction with one fixed point,
    so a zero residual on every reachable state means these are the exact optimal values."""
    walls = tm.u_maze(10, 9, 6, 3)
    height, width = walls.shape
    start, goal, noise, gamma = 8 * 10 + 1, 1 * 10 + 1, 0.25, 0.9
    v, q = tm.value_iteration(tm.transition_table(walls), goal, noise, gamma)

    def moved(s, dr, dc):  # the cell reached from s; a wall or the edge of the grid leaves the agent where it is
        r, c = s // width + dr, s % width + dc
        return r * width + c if 0 <= r < height and 0 <= c < width and not walls[r, c] else s

    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]  # north, south, west, east
    states = [s for s in range(walls.size) if not walls.flat[s] and s != goal] + [start]
    residuals = []
    for s in states:
        # the commanded move runs with probability 1 − noise; with probability noise a uniformly drawn one does
        outcome = [GOAL_REWARD if moved(s, *d) == goal else gamma * v[moved(s, *d)] for d in steps]
        backup = [(1 - noise) * outcome[a] + noise * sum(outcome) / 4 for a in range(4)]
        residuals += [abs(v[s] - max(backup))] + [abs(q[s, a] - backup[a]) for a in range(4)]
    assert max(residuals) < 1e-8 and v[goal] == 0.0
    assert v[start] == pytest.approx(0.870, abs=5e-4)  # README's V*(start); the start is 19 noiseless moves from the goal


def test_u_maze_geometry_and_shortest_path(tm):
    walls = tm.u_maze(10, 9, 6, 3)
    assert (~walls).sum() == 7 * 8 - 6 * 3  # interior minus the obstacle
    assert walls[8, 1] and not walls[7, 1] and not walls[1, 1]  # the notebook's start sits in the bottom wall
    next_state = tm.transition_table(walls)
    start, goal = 8 * 10 + 1, 1 * 10 + 1
    assert next_state[start].tolist() == [7 * 10 + 1, start, start, start]
    policy = tm.shortest_path_policy(next_state, goal)[None]
    _, success, steps = tm.rollout(policy, next_state, start, goal, 0.0, 100, np.random.default_rng(0))
    # 1 up out of the start, 6 east along the bottom, 6 up the right arm, 6 west along the top
    assert success.tolist() == [True] and steps.tolist() == [19]


def test_policies_only_use_dataset_actions(tm):
    q = np.array([[1.0, 2.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    v = np.array([1.0, 0.0])
    counts = np.array([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    greedy = tm.greedy_policy(q, counts)
    assert greedy[0].tolist() == [0.0, 1.0, 0.0, 0.0]  # action 2 has the highest Q but was never taken
    assert greedy[1] == pytest.approx([0.25] * 4)  # no data: uniform
    awr = tm.awr_policy(q, v, counts, temperature=1.0)
    weights = np.array([1 * math.exp(0.0), 3 * math.exp(1.0)])
    assert awr[0] == pytest.approx([*(weights / weights.sum()), 0.0, 0.0])
    assert awr[1] == pytest.approx([0.25] * 4)


def test_bad_input_is_rejected(tm):
    for overrides, message in (
        ({"expectiles": (0.5, 1.0)}, "expectiles"),
        ({"noise": 1.5}, "noise"),
        ({"height": 6}, "too small"),
        ({"width": 8}, "too small"),
    ):
        with pytest.raises(ValueError, match=message):
            tm.check_args(tm.Args(**overrides))
    tm.check_args(tm.Args())
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--expectiles", "0.5", "1.2"], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--expectiles must" in proc.stderr and "Traceback" not in proc.stderr


def test_iql_beats_one_step_against_v_star(tm, fast_run):
    proc, run_dir = fast_run
    results = json.loads((run_dir / "results.json").read_text())
    by_tau = {r["expectile"]: r for r in results["iql"]}
    one_step, iql = by_tau[0.5], by_tau[0.95]
    # the paper's claim (section 5.1, Fig. 2): multi-step IQL lands much closer to V* than one-step evaluation
    assert iql["v_error"] <= one_step["v_error"] / 3
    assert iql["greedy"]["success_rate"] >= 0.9
    assert iql["v_start"] > one_step["v_start"]
    assert "IQL tau=0.95" in proc.stdout
    # greedy success need not separate them (one-step's reaches 0.999 in the README's full run); AWR's does. Measured at
    # this budget, AWR success, IQL / one-step: seed 1 1.000 / 0.255, seed 2 1.000 / 0.355, seed 3 1.000 / 0.230
    assert iql["awr"]["success_rate"] >= 0.9
    assert iql["awr"]["success_rate"] >= one_step["awr"]["success_rate"] + 0.5


def test_outputs_written(tm, fast_run):
    _, run_dir = fast_run
    results = json.loads((run_dir / "results.json").read_text())
    next_state = tm.transition_table(tm.u_maze(10, 9, 6, 3))
    v_star, _ = tm.value_iteration(next_state, goal=11, noise=0.25, gamma=0.9)
    assert results["v_star_start"] == pytest.approx(v_star[81])
    assert results["optimal"]["success_rate"] > results["random"]["success_rate"]
    for r in results["iql"]:
        for value in (r["v_error"], r["v_start"], r["greedy"]["success_rate"], r["awr"]["success_rate"]):
            assert math.isfinite(value)
    assert (run_dir / "toy_maze.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "toy_maze.png").stat().st_size > 10_000
    assert list(run_dir.glob("events.out.tfevents.*"))
