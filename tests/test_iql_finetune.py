"""iql_finetune.py: the replay buffer and masks as functions, then the script as a subprocess with tiny budgets on the
local test datasets of conftest.py (offline + online smoke run, --load-model from an iql.py checkpoint, resume in the
online phase, bad inputs), and the PointMaze evidence that online fine-tuning beats the offline result."""

import glob
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import MAZES, ROOT, assert_success_is_judged_at_the_goal_cell_centre, run_script

POINTMAZE = "D4RL/pointmaze/umaze-v2"
HOPPER = "mujoco/hopper/medium-v0"
POINTMAZE_GOAL = np.array([-1.0, 1.0])  # centre of the eval goal cell (1, 1) of the 5x5 U-maze (maze_size_scaling 1)


def load_module():
    spec = importlib.util.spec_from_file_location("iql_finetune", ROOT / "iql_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ft = load_module()


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def only_run_dir(cwd):
    dirs = glob.glob(str(cwd / "runs" / "*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def evaluations(run_dir):
    import csv

    with open(os.path.join(run_dir, "evaluations.csv")) as f:
        return list(csv.DictReader(f))


def eval_lines(stdout):
    """(step, success, return) of each evaluation line."""
    pattern = r"^step +(\d+)/\d+ .*?success ([\d.]+) \| return +(-?[\d.]+)"
    return [(int(m[1]), float(m[2]), float(m[3])) for m in re.finditer(pattern, stdout, re.M)]


# --- functions ---------------------------------------------------------------------------------------------------------


def rows(values, obs_dim=2, act_dim=1):
    """Buffer rows obs | action | reward | next obs | mask, every column holding the value (next obs: value + 0.5)."""
    v = torch.as_tensor(values, dtype=torch.float32)[:, None]
    return torch.cat([v.repeat(1, obs_dim), v.repeat(1, act_dim), v, v.repeat(1, obs_dim) + 0.5, torch.ones_like(v)], 1)


def test_buffer_starts_with_the_offline_data_and_evicts_oldest_first():
    # the script's buffer: a tensor of rows, the dataset's first, then online_added online ones from row n_offline on
    buffer, n_offline = torch.zeros(10, 7), 6
    ft.write_rows(buffer, 0, rows(range(6)))
    size = lambda online_added: min(n_offline + online_added, len(buffer))  # noqa: E731  (the rows sampled from)
    batch = lambda idx: ft.to_batch(buffer[idx], 2, 1)  # noqa: E731
    assert size(0) == 6 and len(ft.online_rows(buffer, n_offline, 0)) == 0
    drawn = batch(torch.randint(size(0), (1000,)))  # as the script samples
    assert set(drawn.rewards.tolist()) == set(range(6))  # only the offline rows, all of them
    assert torch.equal(drawn.observations[:, 0], drawn.rewards)
    assert torch.equal(drawn.next_observations[:, 1], drawn.rewards + 0.5)

    ft.write_rows(buffer, n_offline, rows([100, 101, 102]))  # fits: nothing evicted yet
    assert size(3) == 9 and sorted(batch(torch.arange(9)).rewards.tolist()) == [0, 1, 2, 3, 4, 5, 100, 101, 102]
    for online_added, r in enumerate(range(103, 107), start=3):  # one at a time, as the online loop adds them
        ft.write_rows(buffer, n_offline + online_added, rows([r]))
    kept = sorted(batch(torch.arange(10)).rewards.tolist())
    assert size(7) == 10 and kept == [3, 4, 5, 100, 101, 102, 103, 104, 105, 106]  # offline 0, 1, 2 went first
    assert ft.online_rows(buffer, n_offline, 7)[:, 3].tolist() == list(range(100, 107))  # reward column, oldest first
    ft.write_rows(buffer, n_offline + 7, rows(range(107, 112)))
    assert sorted(batch(torch.arange(10)).rewards.tolist()) == list(range(102, 112))  # then the oldest online ones
    assert ft.online_rows(buffer, n_offline, 12)[:, 3].tolist() == list(range(102, 112))
    restored, saved = torch.zeros(10, 7), ft.online_rows(buffer, n_offline, 12)  # as --resume rebuilds it
    ft.write_rows(restored, 0, rows(range(6)))  # the dataset, then the saved rows where they were
    ft.write_rows(restored, n_offline + 12 - len(saved), saved)
    ft.write_rows(restored, n_offline + 12, rows([112]))
    assert sorted(ft.to_batch(restored, 2, 1).rewards.tolist()) == list(range(103, 113))  # same FIFO order as before
    before = buffer.clone()
    ft.write_rows(buffer, n_offline + 12, torch.zeros(0, 7))  # e.g. a checkpoint with no online rows yet
    assert torch.equal(buffer, before)
    with pytest.raises(ValueError):
        ft.write_rows(buffer, 0, rows(range(11)))


def test_masks_termination_vs_truncation():
    # (terminated, truncated) -> (bootstrap mask, episode over); mazes terminate at the relabelled goal (RelabelledGoal)
    assert ft.online_flags(True, False) == (0.0, True)  # a true termination stops bootstrapping
    assert ft.online_flags(False, True) == (1.0, True)  # a time limit bootstraps
    assert ft.online_flags(True, True) == (0.0, True)
    assert ft.online_flags(False, False) == (1.0, False)


def test_offline_relabelling_and_reward_shift_match_the_online_ones():
    class Episode:  # a Minari episode that ends by truncation and passes through the goal radius at its second step
        achieved = np.array([[0.0, 0.0], [-0.5, 0.6], [-0.9, 0.9], [-2.0, 2.0]])
        observations = dict(observation=np.hstack([achieved, np.zeros((4, 2))]), achieved_goal=achieved)
        actions, rewards = np.array([[2.0, 0.0], [0.0, -1.0], [0.5, 0.5]]), np.array([1.0, 1.0, 1.0])
        terminations, truncations = np.zeros(3, bool), np.array([False, False, True])

    obs, actions, rewards, next_obs, masks = ft.episode_transitions(Episode, "pointmaze", POINTMAZE_GOAL)
    assert rewards.tolist() == [0.0, 1.0, 0.0] and masks.tolist() == [1.0, 0.0, 1.0]  # truncation at the end bootstraps
    online_rewards, online_terminals = ft.relabel(next_obs[:, :2], POINTMAZE_GOAL, dense=False)  # what the online loop does
    assert rewards.tolist() == online_rewards.tolist() and masks.tolist() == (1.0 - online_terminals).tolist()
    assert actions.max() < 1 and actions.min() > -1
    _, _, raw_rewards, _, raw_masks = ft.episode_transitions(Episode, "pointmaze", None)  # --no-relabel: Minari's own
    assert raw_rewards.tolist() == [1.0, 1.0, 1.0] and raw_masks.tolist() == [1.0, 1.0, 1.0]
    r = np.array([0.0, 1.0])  # offline rewards; online, one at a time (np.float32) through the same function
    assert ft.preprocess_rewards(r, np.array([1.0, 5.0]), "antmaze").tolist() == [-1.0, 0.0]
    assert ft.preprocess_rewards(r, np.array([100.0, 600.0]), "locomotion").tolist() == [0.0, 2.0]
    assert ft.preprocess_rewards(np.float32(1.0), np.array([100.0, 600.0]), "locomotion") == 2.0
    assert ft.preprocess_rewards(r, np.array([100.0, 600.0]), "adroit").tolist() == [0.0, 1.0]
    # equal returns (e.g. a pendulum held up for every step of every episode): nothing to normalise, scale 1 (was 1e9)
    assert ft.preprocess_rewards(r, np.array([1000.0, 1000.0]), "locomotion").tolist() == [0.0, 1.0]

    dense = ft.episode_transitions(Episode, "pointmaze", POINTMAZE_GOAL, dense=True)  # *-dense-v2: exp(−distance)
    distance = np.linalg.norm(Episode.achieved[1:] - POINTMAZE_GOAL, axis=1)
    assert dense[2].tolist() == pytest.approx(np.exp(-distance).tolist()) and dense[4].tolist() == [1.0, 0.0, 1.0]
    assert ft.relabel(Episode.achieved[2], POINTMAZE_GOAL, dense=True)[0] == pytest.approx(np.exp(-distance[1]))


def test_actions_are_mapped_between_the_action_space_and_unit_box():
    class Episode:
        observations, rewards = np.zeros((3, 2)), np.zeros(2)
        actions, terminations = np.array([[3.0, -2.0], [0.0, 1.0]]), np.zeros(2, bool)

    scale = (np.array([-3.0, -2.0], np.float32), np.array([3.0, 2.0], np.float32))  # e.g. invertedpendulum, pusher
    actions = ft.episode_transitions(Episode, "locomotion", None, action_scale=scale)[1]
    assert actions.ravel().tolist() == pytest.approx([1 - 1e-5, -1 + 1e-5, 0.0, 0.5])
    assert ft.env_action(np.array([1.0, -0.5]), scale).tolist() == [3.0, -1.0]

    class Env(gym.Env):  # one step per episode; records what evaluate sends to the env (a vector env of these)
        sent, observation_space, action_space = [], gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-scale[1], scale[1])

        def reset(self, seed=None, options=None):
            return np.zeros(2, np.float32), {}

        def step(self, action):
            Env.sent.append(action)
            return np.zeros(2, np.float32), 0.0, True, False, {}

        def close(self):
            pass

    class Actor(torch.nn.Module):
        def forward(self, obs):
            return torch.tensor([0.5, -1.0]).expand(len(obs), 2), torch.zeros(2)

    ft.evaluate(Actor(), Env, 2, 0, "locomotion", "cpu", scale)
    assert len(Env.sent) == 2 and all(a.tolist() == [1.5, -2.0] for a in Env.sent)


@pytest.mark.parametrize("dataset_id", MAZES)
def test_maze_success_is_judged_at_the_relabelling_goal(minari_root, dataset_id):
    """Success (and the terminal and reward, online too) is judged where the data was relabelled: within 0.5 of the
    goal cell's centre, whatever goal the env drew at reset."""
    import minari

    env = ft.make_eval_env(minari.load_dataset(dataset_id), dataset_id, ft.domain_of(dataset_id))
    assert_success_is_judged_at_the_goal_cell_centre(env)


def test_polyak_update_stays_outside_autograd():
    qf, target = ft.TwinQNetwork(3, 2, 8), ft.TwinQNetwork(3, 2, 8)
    target.requires_grad_(False)
    before = [p.clone() for p in target.parameters()]
    for _ in range(3):  # the script's update calls it with autograd on, right after the Q step
        ft.polyak_update(target, qf, 0.5)
    for p_t, p, p0 in zip(target.parameters(), qf.parameters(), before):
        assert not p_t.requires_grad and p_t.grad_fn is None and p_t.is_leaf  # no graph links step to step
        assert torch.allclose(p_t, p + (p0 - p) * 0.125)


# --- the script ---------------------------------------------------------------------------------------------------------

TINY = ["--batch-size", "64", "--hidden-dim", "64", "--eval-episodes", "5"]


def test_smoke_offline_then_online(minari_root, tmp_path):
    proc = run_script(
        "iql_finetune.py",
        "--env-id",
        POINTMAZE,
        "--offline-steps",
        300,
        "--online-steps",
        300,
        "--eval-interval",
        200,
        "--log-interval",
        100,
        "--checkpoint-interval",
        200,
        *TINY,
        cwd=tmp_path,
    )
    assert "30000 transitions" in proc.stdout and "300 offline + 300 online steps" in proc.stdout
    assert [s for s, _, _ in eval_lines(proc.stdout)] == [200, 300, 400, 600]  # after the offline phase, then on interval
    assert re.search(r"online 300/300 .*goal distance +[\d.]+ \| .*updates/s .*env steps/s", proc.stdout)
    run_dir = only_run_dir(tmp_path)
    rows = evaluations(run_dir)  # one row per evaluation, both phases
    assert [r["step"] for r in rows] == ["200", "300", "400", "600"]
    assert list(rows[0]) == ["step", "score", "success_rate", "mean_return", "goal_distance"]
    ckpt = torch.load(os.path.join(run_dir, "checkpoint_600.pt"), weights_only=True)
    summary = ft.evaluations_summary(ckpt["evaluations"], os.path.join(run_dir, "evaluations.csv"))
    summary = summary.replace(f"{tmp_path}/", "")  # path as run
    assert proc.stdout.strip().splitlines()[-1] == summary and summary.startswith("last score ")
    for tag in [
        "eval/success_rate",
        "eval/normalized_score",
        "eval/goal_distance",
        "losses/qf_loss",
        "charts/updates_per_s",
        "charts/env_steps_per_s",
        "charts/episodic_return",
        "charts/episodic_success",
    ]:
        assert scalars(run_dir, tag), tag
    rates = [v for _, v in scalars(run_dir, "charts/learning_rate")]
    assert len(rates) == 6 and all(v == pytest.approx(3e-4) for v in rates)  # no decay in either phase

    assert ckpt["format"] == "iql_finetune.py checkpoint v2" and ckpt["online_added"] == 300
    online = ckpt["online_rows"].numpy()  # obs (4) | action (2) | reward | next obs (4) | mask
    assert online.shape == (300, 12) and np.abs(online[:, 4:6]).max() <= 1
    assert np.allclose(online[1:, :4][online[:-1, 11] == 1], online[:-1, 7:11][online[:-1, 11] == 1])  # consecutive steps
    reached = np.linalg.norm(online[:, 7:9] - POINTMAZE_GOAL, axis=1) <= 0.5  # the offline data's relabelling
    assert np.array_equal(online[:, 6], reached - 1.0) and np.array_equal(online[:, 11], 1.0 - reached)
    assert "online_rows" in torch.load(os.path.join(run_dir, "checkpoint_200.pt"), weights_only=True)


def test_antmaze_online_phase_uses_the_data_env_maze_and_the_relabelled_goal(minari_root, tmp_path):
    run_script(
        "iql_finetune.py",
        "--env-id",
        "antmaze-umaze-v0",
        "--offline-steps",
        50,
        "--online-steps",
        200,
        "--eval-interval",
        1000,
        "--eval-episodes",
        2,
        *TINY[:4],
        cwd=tmp_path,
    )
    ckpt = torch.load(glob.glob(str(tmp_path / "runs" / "*" / "checkpoint_250.pt"))[0], weights_only=True)
    online = ckpt["online_rows"].numpy()  # obs (29: x, y, then the ant) | action (8) | reward | next obs (29) | mask
    assert online.shape == (200, 68) and np.abs(online[:, 29:37]).max() <= 1
    # umaze: Minari's eval map is mirrored (start at cell (3, 3)); the data env's own starts at cell (3, 1) = (-4, -4)
    assert np.abs(online[0, :2] - [-4.0, -4.0]).max() <= 1.0
    reached = np.linalg.norm(online[:, 38:40] - [-4.0, 4.0], axis=1) <= 0.5  # goal cell (1, 1), maze_size_scaling 4
    assert np.array_equal(online[:, 37], reached - 1.0) and np.array_equal(online[:, 67], 1.0 - reached)


@pytest.fixture(scope="module")
def iql_checkpoint(minari_root, tmp_path_factory):
    """A checkpoint of iql.py itself (200 steps on Hopper, expectile 0.8) and its final evaluation."""
    cwd = tmp_path_factory.mktemp("iql")
    proc = run_script(
        "iql.py",
        "--env-id",
        HOPPER,
        "--total-steps",
        200,
        "--eval-interval",
        200,
        "--checkpoint-interval",
        200,
        "--expectile",
        0.8,
        *TINY,
        cwd=cwd,
    )
    (path,) = glob.glob(str(cwd / "runs" / "*" / "checkpoint_200.pt"))
    return path, eval_lines(proc.stdout)[-1]


def test_load_model_from_an_iql_checkpoint(iql_checkpoint, tmp_path):
    path, (_, _, iql_return) = iql_checkpoint
    proc = run_script(
        "iql_finetune.py", "--load-model", path, "--online-steps", 200, "--eval-interval", 100, *TINY, cwd=tmp_path
    )
    assert "no offline phase" in proc.stdout and "0 offline + 200 online steps" in proc.stdout
    evals = eval_lines(proc.stdout)
    assert [s for s, _, _ in evals] == [0, 100, 200]
    assert [r["step"] for r in evaluations(only_run_dir(tmp_path))] == ["0", "100", "200"]
    assert proc.stdout.strip().splitlines()[-1].startswith("last mean_return ")  # Hopper has no reference scores
    assert evals[0][2] == iql_return  # same actor, same evaluation seeds: the iql.py networks were loaded
    run_dir = only_run_dir(tmp_path)
    rates = [v for _, v in scalars(run_dir, "charts/learning_rate")]
    assert rates and all(v == pytest.approx(3e-4) for v in rates)  # not iql.py's rate, cosine-decayed to 0 at its last step
    ckpt = torch.load(os.path.join(run_dir, "checkpoint_200.pt"), weights_only=True)
    assert ckpt["dataset_id"] == HOPPER and ckpt["args"]["offline_steps"] == 0 and ckpt["args"]["load_model"] == path
    assert (ckpt["args"]["expectile"], ckpt["args"]["temperature"]) == (0.8, 3.0)  # the pre-training's, and the default
    # iql.py's Adam moments came across (its 200 steps plus at most 200 online updates; a fresh Adam would be at ≤ 200)
    iql_adam = torch.load(path, weights_only=True)["qf_optimizer"]
    assert iql_adam["step_count"].item() == 200 and 200 < ckpt["qf_optimizer"]["step_count"].item() <= 400
    masks = ckpt["online_rows"][:, -1]  # Hopper's time limit is 1000 steps: every episode ended in 200 steps is a fall
    assert ckpt["episodes"] >= 1 and (masks == 0).sum() == ckpt["episodes"] and set(masks.tolist()) == {0.0, 1.0}


def test_resume_in_the_online_phase_restores_the_buffer(minari_root, tmp_path):
    common = ["--eval-interval", 1000, "--checkpoint-interval", 150, *TINY]
    run_script("iql_finetune.py", "--env-id", POINTMAZE, "--offline-steps", 100, "--online-steps", 200, *common, cwd=tmp_path)
    run_dir = only_run_dir(tmp_path)
    os.remove(os.path.join(run_dir, "checkpoint_300.pt"))
    proc = run_script("iql_finetune.py", "--resume", os.path.join(run_dir, "checkpoint_150.pt"), cwd=tmp_path)
    assert " from step 150 (" in proc.stdout and "buffer restored: 30000 offline + 50 online rows" in proc.stdout
    resumed = torch.load(os.path.join(run_dir, "checkpoint_300.pt"), weights_only=True)
    assert resumed["online_added"] == 200 and len(resumed["online_rows"]) == 200
    mid = torch.load(os.path.join(run_dir, "checkpoint_150.pt"), weights_only=True)
    assert torch.equal(resumed["online_rows"][:50], mid["online_rows"])  # the rows collected before the stop are kept
    assert [r["step"] for r in evaluations(run_dir)] == ["100", "300"]  # the first run's evaluation at 300 was purged


def test_no_save_buffer_leaves_the_online_rows_out_and_a_resume_restarts_from_the_offline_data(minari_root, tmp_path):
    """README: --no-save-buffer leaves the online transitions out of the checkpoints, and a resumed run then restarts from
    the offline data alone."""
    common = ["--eval-interval", 1000, "--checkpoint-interval", 150, *TINY]
    flags = ["--env-id", POINTMAZE, "--offline-steps", 100, "--online-steps", 200, "--no-save-buffer", *common]
    run_script("iql_finetune.py", *flags, cwd=tmp_path)
    run_dir = only_run_dir(tmp_path)
    for step, online_added in [(150, 50), (300, 200)]:
        ckpt = torch.load(os.path.join(run_dir, f"checkpoint_{step}.pt"), weights_only=True)
        assert ckpt["online_rows"] is None and ckpt["online_added"] == online_added
    os.remove(os.path.join(run_dir, "checkpoint_300.pt"))
    # --save-buffer may change on resume (a run-control flag): the resumed run's last checkpoint shows what it held
    proc = run_script("iql_finetune.py", "--resume", os.path.join(run_dir, "checkpoint_150.pt"), "--save-buffer", cwd=tmp_path)
    assert "holds no online transitions" in proc.stdout and "offline data alone" in proc.stdout
    resumed = torch.load(os.path.join(run_dir, "checkpoint_300.pt"), weights_only=True)
    # the dataset and the 150 transitions of the steps since the resume, none from before it (nor empty rows for them)
    assert resumed["online_added"] == 150 and len(resumed["online_rows"]) == 150
    assert (resumed["online_rows"][:, 4:6].abs() > 0).all(dim=1).all()  # every row holds an action taken online


def test_a_buffer_smaller_than_dataset_plus_online_steps_evicts_the_oldest_rows_first(minari_root, tmp_path):
    """--buffer-size 650 with AntMaze umaze's 600 dataset rows and 800 online steps: the ring first overwrites the
    dataset's rows, then the oldest online ones, so a checkpoint holds the newest 650 online transitions, in order."""
    import minari

    flags = ["--env-id", "D4RL/antmaze/umaze-v1", "--offline-steps", 100, "--online-steps", 800, "--buffer-size", 650]
    flags += ["--checkpoint-interval", 300, "--eval-interval", 10_000, "--eval-episodes", 1, *TINY[:4]]
    run_script("iql_finetune.py", *flags, cwd=tmp_path)
    run_dir = only_run_dir(tmp_path)
    ckpt = {step: torch.load(os.path.join(run_dir, f"checkpoint_{step}.pt"), weights_only=True) for step in (300, 600, 900)}
    rows = {step: c["online_rows"] for step, c in ckpt.items()}  # after 200, 500 and 800 online steps
    assert [len(r) for r in rows.values()] == [200, 500, 650] and ckpt[900]["online_added"] == 800
    assert torch.equal(rows[600][:200], rows[300])  # no online row was lost yet: the dataset's rows went first
    assert torch.equal(rows[900][:350], rows[600][150:])  # then the 150 oldest online ones, the newest kept in order
    # and they are online rows indeed, not dataset rows read back from where the ring should have written
    ds = minari.load_dataset("D4RL/antmaze/umaze-v1")
    env = ft.make_eval_env(ds, ds.id, "antmaze")
    scale = (env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32))
    dataset_rows = {tuple(r) for r in ft.load_transitions(ds, "antmaze", env.goal, False, scale)[0].tolist()}
    assert len(dataset_rows) == 600 and not any(tuple(r) in dataset_rows for r in rows[900].tolist())


def test_ctrl_c_in_the_online_phase_writes_a_checkpoint_with_the_buffer(minari_root, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "iql_finetune.py"),
        "--env-id",
        POINTMAZE,
        "--offline-steps",
        100,
        "--online-steps",
        10**6,
        "--eval-interval",
        10**6,
        *TINY,
    ]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if "offline 100/100" in line:  # the evaluation after the offline phase: the online phase starts next
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, out
    step = int(re.search(r"interrupted by SIGINT at step (\d+)", out)[1])
    ckpt = torch.load(glob.glob(str(tmp_path / "runs" / "*" / f"checkpoint_{step}.pt"))[0], weights_only=True)
    assert step > 100 and ckpt["step"] == step and len(ckpt["online_rows"]) == ckpt["online_added"] == step - 100
    assert "--resume" in out


def test_bad_inputs(iql_checkpoint, tmp_path):
    path, _ = iql_checkpoint

    def error(*args):
        proc = run_script("iql_finetune.py", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr.strip().splitlines()[-1]

    assert "was trained on 'mujoco/hopper/medium-v0', not 'D4RL/pointmaze/umaze-v2'" in error(
        "--load-model", path, "--env-id", POINTMAZE
    )
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    assert "cannot read checkpoint" in error("--load-model", corrupt)
    assert "cannot read checkpoint" in error("--resume", corrupt)
    assert "no checkpoint at" in error("--load-model", tmp_path / "missing.pt")
    message = error("--resume", path)
    assert "not an iql_finetune.py checkpoint" in message and "fine-tune it with --load-model" in message
    other = tmp_path / "other.pt"
    torch.save(dict(format="something else"), other)
    assert "not an iql.py checkpoint" in error("--load-model", other)
    assert "drop --offline-steps" in error("--load-model", path, "--offline-steps", 10)
    assert "drop --load-model" in error("--load-model", path, "--resume", path)
    assert "--online-steps must be >= 0" in error("--env-id", POINTMAZE, "--online-steps", -1)
    assert "--expectile must be in (0, 1)" in error("--env-id", POINTMAZE, "--expectile", 1.5)
    assert "does not fit in --buffer-size" in error("--env-id", POINTMAZE, "--buffer-size", 1000)
    assert "unknown dataset" in error("--env-id", "pointmaze-nowhere")


def test_load_model_refuses_a_checkpoint_trained_with_the_other_relabelling(minari_root, tmp_path):
    """A maze checkpoint of iql.py trained on Minari's own rewards (--no-relabel) is fine-tuned on those rewards only: the
    default relabelling would change the task under the networks."""
    flags = ["--env-id", POINTMAZE, "--total-steps", 10, "--eval-interval", 10, "--eval-episodes", 1, "--no-relabel"]
    run_script("iql.py", *flags, *TINY[:4], "--runs-dir", tmp_path / "iql", cwd=tmp_path)
    (path,) = glob.glob(str(tmp_path / "iql" / "*" / "checkpoint_10.pt"))
    finetune = ["--load-model", path, "--online-steps", 10, "--eval-episodes", 1, "--runs-dir", tmp_path / "finetune"]
    proc = run_script("iql_finetune.py", *finetune, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and not (tmp_path / "finetune").exists(), proc.stdout
    message = proc.stderr.strip().splitlines()[-1]
    assert message == "iql_finetune.py: error: iql.py trained it with relabel=False: match it with --relabel/--no-relabel"
    proc = run_script("iql_finetune.py", *finetune, "--no-relabel", cwd=tmp_path)  # matched, it fine-tunes
    assert "no offline phase" in proc.stdout and "relabel=False" in proc.stdout


def test_online_fine_tuning_beats_the_offline_result_on_pointmaze(minari_root, tmp_path):
    """Section 5.3 in small, against the right baseline: 3000 offline steps on the 30k-step PointMaze data, then 3000
    online steps; and a run of 6000 offline steps: same seed, same evaluation, same number of updates (the first 3000 the
    same); only the online data differ. Measured here with 64-unit networks, success over 100 eval episodes at step 3000 /
    fine-tuned at 6000 / offline only at 6000 / fine-tuned with its online rows never sampled: seed 1 0.21 / 0.32 / 0.18 /
    0.19, seed 2 0.12 / 0.30 / 0.08 / 0.07, seed 3 0.00 / 0.21 / 0.12 / -, seed 4 0.01 / 0.34 / 0.13 / 0.05, seed 5 0.09 /
    0.30 / 0.13 / 0.07. Margins: 0.10 over the offline result (the test's old margin; smallest gain seen 0.11), 0.05 over
    offline only (half the smallest gain seen, 0.09). Seed 2 runs: seed 1 clears the first margin by 0.01 only. With the
    default 256-unit networks and 6000 online steps there is no gain to assert: the offline-only runs of seeds 2 and 5
    reached 0.99 and 0.91 by step 9000, the fine-tuned ones 0.72 and 0.90."""
    budget = ["--env-id", POINTMAZE, "--hidden-dim", 64, "--eval-interval", 3000, "--eval-episodes", 100, "--no-save-model"]
    budget += ["--seed", 2]
    runs = {}
    for name, steps in [("fine-tuned", [3000, 3000]), ("offline only", [6000, 0])]:
        phases = ["--offline-steps", steps[0], "--online-steps", steps[1]]
        runs[name] = eval_lines(
            run_script("iql_finetune.py", *budget, *phases, "--runs-dir", tmp_path / name, cwd=tmp_path).stdout
        )
    (offline_step, offline_success, _), (online_step, online_success, _) = runs["fine-tuned"]
    assert (offline_step, online_step) == (3000, 6000) and [s for s, _, _ in runs["offline only"]] == [3000, 6000]
    assert runs["offline only"][0] == runs["fine-tuned"][0]  # the same first 3000 updates, evaluated alike
    offline_only_success = runs["offline only"][1][1]
    print(f"success: offline {offline_success:.2f}, fine-tuned {online_success:.2f}, offline only {offline_only_success:.2f}")
    assert online_success >= offline_success + 0.10, runs
    assert online_success >= offline_only_success + 0.05, runs  # the gain is the online data's, not the extra updates'
