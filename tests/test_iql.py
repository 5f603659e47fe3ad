"""iql.py: loss math against hand-computed values, data conversion, and real runs as subprocesses on local Minari data."""

import csv
import importlib.util
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import MAZES, ROOT, assert_success_is_judged_at_the_goal_cell_centre, run_script

spec = importlib.util.spec_from_file_location("iql", ROOT / "iql.py")
iql = importlib.util.module_from_spec(spec)
spec.loader.exec_module(iql)

TINY = ["--batch-size", "64", "--hidden-dim", "64", "--log-interval", "10"]


# ---------------------------------------------------------------------------------------------- loss math
def test_expectile_loss_at_half_is_half_the_mse():
    diff = torch.tensor([1.5, -2.0, 0.25, -0.5])
    assert iql.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())


def test_expectile_loss_is_asymmetric():
    # u = +2 weighs 0.9, u = −2 weighs 0.1: (0.9·4 + 0.1·4) / 2 = 2.0; u = +1, −3: (0.9·1 + 0.1·9) / 2 = 0.9
    assert iql.expectile_loss(torch.tensor([2.0, -2.0]), 0.9).item() == pytest.approx(2.0)
    assert iql.expectile_loss(torch.tensor([1.0, -3.0]), 0.9).item() == pytest.approx(0.9)
    # under-estimating V (u > 0) costs 9× more than over-estimating it by the same amount at τ = 0.9
    assert iql.expectile_loss(torch.tensor([1.0]), 0.9).item() == pytest.approx(
        9 * iql.expectile_loss(torch.tensor([-1.0]), 0.9).item()
    )


def test_expectile_loss_minimiser_is_the_expectile():
    # the τ-expectile m of {0, 1} solves τ(1 − m) = (1 − τ)m, i.e. m = τ; fit a scalar V by gradient descent
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        iql.expectile_loss(torch.tensor([0.0, 1.0]) - v, 0.9).backward()
        opt.step()
    assert v.item() == pytest.approx(0.9, abs=1e-4)


def test_awr_weights_and_clip():
    w = iql.awr_weights(torch.tensor([0.0, 0.1, -0.2, 1.0]), temperature=10.0, exp_adv_max=100.0)
    assert w.tolist() == pytest.approx([1.0, math.e, math.exp(-2.0), 100.0])  # exp(10) = 22026 is clipped to 100


def test_td_target_uses_terminal_mask_only():
    r, masks, next_v = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2.0, 5.0, -4.0])
    assert iql.td_target(r, masks, next_v, 0.9).tolist() == pytest.approx([1.0 + 1.8, -1.0, 0.5 - 3.6])


def test_gaussian_log_prob_matches_torch_normal():
    mean, log_std, a = torch.tensor([[0.1, -0.3]]), torch.tensor([-1.0, 0.5]), torch.tensor([[0.4, 0.2]])
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    assert iql.gaussian_log_prob(mean, log_std, a).item() == pytest.approx(expected.item(), rel=1e-6)


def test_actor_mean_is_bounded_and_log_std_clipped():
    actor = iql.Actor(5, 3, 32, 0.0)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-9.0, 0.0, 7.0]))
    mean, log_std = actor(100 * torch.randn(50, 5))
    assert mean.abs().max() <= 1.0 and log_std.tolist() == [-5.0, 0.0, 2.0]


def test_twin_q_heads_are_two_independent_mlps():
    torch.manual_seed(0)
    qf = iql.TwinQNetwork(4, 2, 16)
    obs, act = torch.randn(7, 4), torch.randn(7, 2)
    q = qf(obs, act)
    for head in range(2):
        x = torch.cat([obs, act], -1)
        for layer in range(3):
            x = x @ qf.weights[layer][head] + qf.biases[layer][head]
            x = torch.relu(x) if layer < 2 else x
        assert torch.allclose(q[head], x.squeeze(-1), atol=1e-6)
    assert not torch.allclose(q[0], q[1])  # separately initialised


def test_polyak_update_is_a_running_average_outside_autograd():
    torch.manual_seed(0)
    target, source = iql.TwinQNetwork(3, 1, 8), iql.TwinQNetwork(3, 1, 8)
    target.requires_grad_(False)
    before = [p.clone() for p in target.parameters()]
    iql.polyak_update(target, source, 0.005)
    for p_t, p_0, p in zip(target.parameters(), before, source.parameters()):
        assert torch.allclose(p_t, 0.995 * p_0 + 0.005 * p)
        assert not p_t.requires_grad and p_t.grad_fn is None  # no graph grows across a million steps


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    twin.load_state_dict(net.state_dict())
    ours, reference = iql.Adam(net, lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2)
    for _ in range(20):
        x = torch.randn(16, 3)
        (loss, _), grads = iql.value_and_grad(lambda f: (f(x).square().mean(), x), net)
        ours.step(grads)
        reference.zero_grad()
        reference_loss = twin(x).square().mean()
        reference_loss.backward()
        reference.step()
        assert torch.allclose(loss, reference_loss.detach(), rtol=1e-4)
    # float32 rounding differs by an ulp or two per step (1.2e-6 after 20 steps); a missing bias correction or a
    # misplaced eps moves the parameters by ~1e-3 at this learning rate
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=5e-6)
    assert ours.step_count.item() == 20


def test_adam_cosine_decay_matches_the_paper_schedule():
    net = torch.nn.Linear(2, 1)
    opt = iql.Adam(net, lr=3e-4, decay_steps=1000)
    rates = [opt.learning_rate(torch.tensor(float(s))).item() for s in (0, 250, 500, 1000, 1500)]
    expected = [3e-4, 3e-4 * 0.5 * (1 + math.cos(math.pi / 4)), 1.5e-4, 0.0, 0.0]  # held at 0 past decay_steps
    assert np.allclose(rates, expected, rtol=1e-6, atol=1e-12)
    # and it is torch's CosineAnnealingLR, step for step
    reference = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=1000)
    for s in range(1000):
        assert math.isclose(
            opt.learning_rate(torch.tensor(float(s))).item(), reference.param_groups[0]["lr"], rel_tol=1e-5, abs_tol=1e-10
        )
        reference.step()
        scheduler.step()
    assert iql.Adam(net, lr=3e-4).learning_rate(torch.tensor(123.0)).item() == pytest.approx(3e-4)


def test_value_and_grad_matches_backward_and_leaves_grad_alone():
    torch.manual_seed(0)
    net = iql.ValueNetwork(4, 8)
    x = torch.randn(10, 4)
    (loss, v), grads = iql.value_and_grad(lambda f: ((f(x) - 1).square().mean(), f(x)), net)
    assert all(p.grad is None for p in net.parameters()) and not loss.requires_grad and not v.requires_grad
    (net(x) - 1).square().mean().backward()
    for grad, p in zip(grads, net.parameters(), strict=True):
        assert torch.allclose(grad, p.grad)


def test_adam_state_round_trips_and_refuses_another_network():
    torch.manual_seed(0)
    net = iql.ValueNetwork(4, 8)
    opt = iql.Adam(net, lr=1e-3)
    (_, _), grads = iql.value_and_grad(lambda f: (f(torch.randn(6, 4)).square().mean(), net.net[0].bias), net)
    opt.step(grads)
    saved = {k: v.clone() for k, v in opt.state_dict().items()}
    fresh = iql.Adam(net, lr=1e-3)
    tensors_before = fresh.exp_avg[0]
    fresh.load_state_dict(opt.state_dict())
    assert fresh.exp_avg[0] is tensors_before  # copied in place
    assert saved.keys() == fresh.state_dict().keys() and all(torch.equal(v, fresh.state_dict()[k]) for k, v in saved.items())
    with pytest.raises(RuntimeError, match="size mismatch"):
        iql.Adam(iql.ValueNetwork(4, 16), lr=1e-3).load_state_dict(opt.state_dict())


# ---------------------------------------------------------------------------------------------- data conversion
def episode(achieved, terminations, truncations, rewards=None):
    n = len(terminations)
    achieved = np.asarray(achieved, dtype=np.float64)
    obs = dict(
        achieved_goal=achieved,
        observation=np.arange(len(achieved) * 3, dtype=np.float64).reshape(-1, 3),
        desired_goal=np.zeros_like(achieved),
    )
    return SimpleNamespace(
        observations=obs,
        actions=np.full((n, 2), 1.0),
        rewards=np.asarray(rewards or [0.0] * n),
        terminations=np.asarray(terminations),
        truncations=np.asarray(truncations),
    )


def test_masks_come_from_terminations_not_truncations():
    ep = episode(np.zeros((4, 2)), [False, False, True], [False, False, False], rewards=[1.0, 2.0, 3.0])
    obs, actions, rewards, next_obs, masks = iql.episode_transitions(ep, "antmaze", goal=None)
    assert masks.tolist() == [1.0, 1.0, 0.0]
    ep = episode(np.zeros((4, 2)), [False, False, False], [False, False, True])
    assert iql.episode_transitions(ep, "antmaze", goal=None)[4].tolist() == [1.0, 1.0, 1.0]  # a time limit bootstraps
    # AntMaze observations are (x, y) + the 27-dim (here 3-dim) ant state; next_obs is obs shifted by one
    assert obs.shape == (3, 5) and np.array_equal(next_obs[:-1], obs[1:]) and rewards.tolist() == [1.0, 2.0, 3.0]
    assert actions.max() == pytest.approx(1 - 1e-5)  # clipped so the Gaussian log-likelihood stays finite


def test_maze_relabelling_against_the_eval_goal():
    # s0 → s1 far, s1 → s2 reaches within 0.5 of the goal, s2 → s3 leaves again
    achieved = [[0.0, 0.0], [2.0, 0.0], [3.9, 0.2], [5.0, 0.0]]
    ep = episode(achieved, [False] * 3, [False, False, True], rewards=[1.0, 1.0, 1.0])
    _, _, rewards, _, masks = iql.episode_transitions(ep, "pointmaze", goal=np.array([4.0, 0.0]))
    assert rewards.tolist() == [0.0, 1.0, 0.0] and masks.tolist() == [1.0, 0.0, 1.0]


def test_dense_relabelling_and_action_rescaling():
    achieved = [[0.0, 0.0], [3.0, 0.0], [4.2, 0.0]]
    ep = episode(achieved, [False] * 2, [False, True])
    ep.actions = np.array([[3.0, -3.0], [0.0, 1.5]])
    _, actions, rewards, _, masks = iql.episode_transitions(
        ep, "pointmaze", np.array([4.0, 0.0]), dense=True, action_scale=(np.full(2, -3.0), np.full(2, 3.0))
    )
    assert rewards.tolist() == pytest.approx([math.exp(-1.0), math.exp(-0.2)]) and masks.tolist() == [1.0, 0.0]
    assert actions.ravel().tolist() == pytest.approx([1 - 1e-5, -1 + 1e-5, 0.0, 0.5])


def test_reward_preprocessing_per_domain():
    r, returns = np.array([0.0, 1.0, 2.0]), np.array([10.0, 50.0, 30.0])
    assert iql.preprocess_rewards(r, returns, "antmaze").tolist() == [-1.0, 0.0, 1.0]
    assert iql.preprocess_rewards(r, returns, "locomotion").tolist() == pytest.approx([0.0, 25.0, 50.0])  # · 1000 / 40
    assert iql.preprocess_rewards(r, returns, "adroit").tolist() == [0.0, 1.0, 2.0]
    # equal returns (e.g. a pendulum held up for every step of every episode): nothing to normalise, rewards unchanged
    assert iql.preprocess_rewards(r, np.array([1000.0, 1000.0]), "locomotion").tolist() == [0.0, 1.0, 2.0]


def test_dataset_ids():
    assert iql.resolve_dataset_id("antmaze-medium-diverse-v0") == "D4RL/antmaze/medium-diverse-v1"
    assert iql.resolve_dataset_id("antmaze-umaze-v2") == "D4RL/antmaze/umaze-v1"
    assert iql.resolve_dataset_id("maze2d-large-dense-v1") == "D4RL/pointmaze/large-dense-v2"
    assert iql.resolve_dataset_id("kitchen-mixed-v0") == "D4RL/kitchen/mixed-v2"
    assert iql.resolve_dataset_id("relocate-cloned-v1") == "D4RL/relocate/cloned-v2"
    assert iql.resolve_dataset_id("mujoco/walker2d/simple-v0") == "mujoco/walker2d/simple-v0"
    assert iql.resolve_dataset_id("my/own/data-v0", local_ids={"my/own/data-v0"}) == "my/own/data-v0"
    assert [
        iql.domain_of(d)
        for d in [
            "D4RL/antmaze/umaze-v1",
            "D4RL/pointmaze/open-v2",
            "D4RL/door/human-v2",
            "D4RL/kitchen/mixed-v2",
            "mujoco/hopper/medium-v0",
        ]
    ] == ["antmaze", "pointmaze", "adroit", "kitchen", "locomotion"]


# ---------------------------------------------------------------------------------------------- real runs
def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_run_dir(runs):
    dirs = list(Path(runs).iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize(
    "env_id, domain, obs_dim",
    [
        ("antmaze-medium-diverse-v0", "antmaze", 29),
        ("D4RL/pointmaze/umaze-v2", "pointmaze", 4),
        ("mujoco/hopper/medium-v0", "locomotion", 11),
        ("pen-human-v1", "adroit", 45),
    ],
)
def test_smoke_run_writes_events_checkpoint_and_evaluation(minari_root, tmp_path, env_id, domain, obs_dim):
    proc = run_script(
        "iql.py",
        "--env-id",
        env_id,
        "--total-steps",
        60,
        "--eval-interval",
        30,
        "--eval-episodes",
        2,
        "--checkpoint-interval",
        30,
        *TINY,
        cwd=tmp_path,
    )
    assert f"({domain}," in proc.stdout and f"obs {obs_dim}," in proc.stdout
    assert "Adroit" not in proc.stderr  # Gymnasium-Robotics' notice concerns door/hammer/relocate only
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split("|")[0].split()[1] for line in lines] == ["30/60", "60/60"]
    assert "updates/s" in lines[-1] and "ETA" in lines[-1]
    run_dir = only_run_dir(tmp_path / "runs")
    scalars = events(run_dir)
    for tag in [
        "losses/qf_loss",
        "losses/vf_loss",
        "losses/actor_loss",
        "values/q",
        "values/v",
        "values/advantage",
        "charts/SPS",
        "charts/learning_rate",
        "eval/return",
        "eval/success_rate",
    ]:
        assert tag in scalars, tag
    assert [s for s, _ in scalars["losses/qf_loss"]] == [10, 20, 30, 40, 50, 60]
    assert all(np.isfinite(v) for _, v in scalars["losses/qf_loss"])
    # the actor's learning rate decays along a cosine to 0 at the last step
    assert scalars["charts/learning_rate"][-1][1] == pytest.approx(0.0, abs=1e-12)
    assert scalars["charts/learning_rate"][2][1] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 30 / 60)), rel=1e-5)
    # a normalised score is reported for mazes (success) and for datasets with reference scores (pen), not for Minari mujoco
    has_score = domain != "locomotion"
    assert ("eval/normalized_score" in scalars) == has_score
    assert ("score    n/a" in lines[-1]) != has_score
    ckpt = torch.load(run_dir / "checkpoint_60.pt", weights_only=True)
    assert ckpt["step"] == 60 and ckpt["obs_dim"] == obs_dim and ckpt["dataset_id"] == iql.resolve_dataset_id(env_id)
    for k in ["expectile", "temperature", "dropout_rate"]:  # the per-domain defaults, as no flag set them
        assert ckpt["args"][k] == iql.DOMAIN_DEFAULTS[domain][k]
    assert (run_dir / "checkpoint_30.pt").exists() and not list(run_dir.glob("*.tmp"))


def test_umaze_is_evaluated_on_the_data_maze_not_the_mirrored_one(minari_root):
    import minari

    ds = minari.load_dataset("D4RL/antmaze/umaze-v1")
    env = iql.make_eval_env(ds, "D4RL/antmaze/umaze-v1", "antmaze")
    obs, _ = env.reset(seed=0)
    maze = env.unwrapped.maze
    goal_cell = maze.cell_xy_to_rowcol(maze.unique_goal_locations[0])
    assert tuple(goal_cell) == (1, 1)  # the data env's goal; Minari's eval map puts it at (3, 3)
    assert tuple(maze.cell_xy_to_rowcol(obs["achieved_goal"])) == (3, 1)
    assert env.unwrapped.continuing_task is False  # an episode ends at the goal


@pytest.mark.parametrize("dataset_id", MAZES)
def test_maze_success_is_judged_at_the_relabelling_goal(minari_root, dataset_id):
    """Success (and the terminal and reward) is judged where the data was relabelled: within 0.5 of the
    goal cell's centre, whatever goal the env drew at reset."""
    import minari

    env = iql.make_eval_env(minari.load_dataset(dataset_id), dataset_id, iql.domain_of(dataset_id))
    assert_success_is_judged_at_the_goal_cell_centre(env)


def test_evaluations_summary_gives_the_last_and_the_best(tmp_path):
    path = str(tmp_path / "evaluations.csv")
    assert iql.evaluations_summary([], path) == "no evaluation was run"  # e.g. resumed before its first evaluation
    rows = [dict(step=step, score=score, success_rate=score / 100, mean_return=score / 100) for step, score in
            [(10, 20.0), (20, 70.0), (30, 40.0)]]  # fmt: skip
    iql.write_evaluations(path, rows)
    summary = iql.evaluations_summary(rows, path)
    assert summary.startswith("last score 40.0 at step 30 | best 70.0 at step 20"), summary
    assert iql.evaluations_summary(rows[:2], path).startswith("last score 70.0 at step 20 | best 70.0 at step 20")
    with open(path) as f:
        assert f.readline().strip() == "step,score,success_rate,mean_return" and len(f.readlines()) == 3
    assert not (tmp_path / "evaluations.csv.tmp").exists()
    # no score (Minari mujoco data has no reference returns): the mean return is summarised instead
    rows = [dict(step=5, score=None, success_rate=0.0, mean_return=12.5)]
    assert iql.evaluations_summary(rows, path).startswith("last mean_return 12.5 at step 5 | best 12.5 at step 5")


def final_params(path):
    ckpt = torch.load(path, weights_only=True)
    return {f"{net}.{k}": v for net in ["actor", "qf", "qf_target", "vf"] for k, v in ckpt[net].items()}


def test_resume_in_the_middle_equals_a_straight_run(minari_root, tmp_path):
    args = [
        "--env-id",
        "pen-human-v1",
        "--total-steps",
        80,
        "--eval-interval",
        40,
        "--eval-episodes",
        1,
        "--checkpoint-interval",
        40,
        *TINY,
    ]  # pen's actor has dropout: its RNG state must survive the resume too
    (tmp_path / "a").mkdir()
    run_script("iql.py", *args, cwd=tmp_path / "a")
    straight = only_run_dir(tmp_path / "a" / "runs")
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    shutil.copy(straight / "checkpoint_40.pt", resumed_dir / "checkpoint_40.pt")
    proc = run_script("iql.py", "--resume", resumed_dir / "checkpoint_40.pt", cwd=tmp_path)
    assert proc.stdout.startswith("continuing ") and " from step 40 (" in proc.stdout and "step       80/80" in proc.stdout
    a, b = final_params(straight / "checkpoint_80.pt"), final_params(resumed_dir / "checkpoint_80.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (
        torch.load(straight / "checkpoint_80.pt", weights_only=True),
        torch.load(resumed_dir / "checkpoint_80.pt", weights_only=True),
    )
    assert torch.equal(sa["rng_cpu"], sb["rng_cpu"])
    oa, ob = sa["actor_optimizer"], sb["actor_optimizer"]  # the step count drives the actor's cosine decay
    assert oa["step_count"].item() == ob["step_count"].item() == 80
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    # the evaluations table holds the straight run's rows: step 40's from the checkpoint, step 80's redone
    assert (resumed_dir / "evaluations.csv").read_text() == (straight / "evaluations.csv").read_text()
    # the resumed run's later events continue the same tensorboard run
    assert [s for s, _ in events(resumed_dir)["losses/qf_loss"]][-1] == 80


@pytest.fixture(scope="module")
def eager_and_compiled(minari_root, tmp_path_factory):
    """The same 40 steps eager and with --compile, each with a checkpoint at step 20: {name: run folder}."""
    root = tmp_path_factory.mktemp("compile")
    args = ["--env-id", "D4RL/antmaze/medium-diverse-v1", "--total-steps", 40, "--eval-interval", 40, "--eval-episodes", 1]
    for name, extra in [("eager", []), ("compiled", ["--compile"])]:
        proc = run_script("iql.py", *args, *TINY, "--checkpoint-interval", 20, *extra, "--runs-dir", root / name, cwd=root)
        assert "step       40/40" in proc.stdout
    return {name: only_run_dir(root / name) for name in ("eager", "compiled")}


def test_compiled_update_is_one_graph_and_matches_eager(eager_and_compiled):
    """--compile traces the whole update (fullgraph=True: any graph break is an error) and computes what eager does."""
    eager = final_params(eager_and_compiled["eager"] / "checkpoint_40.pt")
    compiled = final_params(eager_and_compiled["compiled"] / "checkpoint_40.pt")
    # same math, different kernels (eager Adam is torch's fused kernel): measured max difference 1.1e-5 after 40 steps,
    # in Q's first layer, where Adam's g / (√v + ε) turns rounding noise in near-zero gradients into lr-sized steps;
    # 2e-7 elsewhere. A wrong update (say, a missing bias correction) moves parameters by ~1e-2 in 40 steps.
    assert eager.keys() == compiled.keys()
    assert all(torch.allclose(eager[k], compiled[k], rtol=0, atol=1e-4) for k in eager)
    assert any(not torch.equal(eager[k], compiled[k]) for k in eager)  # it really ran different (compiled) code


def resume_from_a_copy(run_dir, step, tmp_path, *flags):
    """Resume from a copy of run_dir's checkpoint_<step>.pt in a folder of its own; returns (process, that folder)."""
    folder = tmp_path / f"resumed_{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    shutil.copy(run_dir / f"checkpoint_{step}.pt", folder)
    proc = run_script("iql.py", "--resume", folder / f"checkpoint_{step}.pt", *flags, cwd=tmp_path)
    assert proc.stdout.startswith("continuing ") and f" from step {step} (" in proc.stdout.splitlines()[0]
    return proc, folder


def test_a_compiled_run_resumes_bit_for_bit(eager_and_compiled, tmp_path):
    """README: a resume continues the same run bit for bit on CPU; under --compile too (the checkpoint's setting)."""
    compiled = eager_and_compiled["compiled"]
    proc, folder = resume_from_a_copy(compiled, 20, tmp_path)
    assert "compile=True" in proc.stdout
    a, b = (torch.load(d / "checkpoint_40.pt", weights_only=True) for d in (compiled, folder))
    for name in ["actor", "qf", "qf_target", "vf", "actor_optimizer", "qf_optimizer", "vf_optimizer"]:
        assert a[name].keys() == b[name].keys() and all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])


def test_a_resume_may_change_the_run_control_flags(eager_and_compiled, tmp_path):
    """Only the run-control flags may change when a run continues (README): a compiled run goes on eager, and a run
    that evaluates more often (with more episodes) still ends bit for bit where it would have: evaluation draws no
    training randomness."""
    eager, compiled = eager_and_compiled["eager"], eager_and_compiled["compiled"]
    proc, folder = resume_from_a_copy(eager, 20, tmp_path, "--eval-interval", 10, "--eval-episodes", 2)
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("step ")] == ["30/40", "40/40"]
    assert [row.split(",")[0] for row in (folder / "evaluations.csv").read_text().splitlines()[1:]] == ["30", "40"]
    info = json.loads((folder / "run.json").read_text())["args"]
    assert (info["eval_interval"], info["eval_episodes"]) == (10, 2)
    a, b = final_params(eager / "checkpoint_40.pt"), final_params(folder / "checkpoint_40.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    proc, folder = resume_from_a_copy(compiled, 20, tmp_path, "--no-compile")
    assert "compile=False" in proc.stdout and "step       40/40" in proc.stdout
    assert json.loads((folder / "run.json").read_text())["args"]["compile"] is False
    a, b = final_params(compiled / "checkpoint_40.pt"), final_params(folder / "checkpoint_40.pt")
    # eager from step 21 on: as close to the compiled run as eager is (the tolerance of the test above)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a) and any(not torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes_to_the_same_result(minari_root, tmp_path):
    args = [
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--total-steps",
        2000,
        "--eval-interval",
        2000,
        "--eval-episodes",
        1,
        "--checkpoint-interval",
        50,
        *TINY,
    ]
    run_script("iql.py", *args, "--runs-dir", tmp_path / "straight", cwd=tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "iql.py"), *map(str, args), "--runs-dir", str(tmp_path / "int")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the signal goes once step 50's checkpoint exists (written by renaming: whole), i.e. the loop runs, with 1950 of
    # its 2000 steps (~3 s here) still to go: it cannot miss the run, however fast the machine
    deadline = time.time() + 120
    while not list((tmp_path / "int").glob("*/checkpoint_50.pt")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT at step" in out, out
    interrupted_at = int(out.split("interrupted by SIGINT at step ")[1].split(";")[0])
    ckpt = Path(out.split("continue with: python iql.py --resume ")[1].split()[0])  # as the script says to continue
    assert ckpt.name == f"checkpoint_{interrupted_at}.pt" and ckpt.parent.parent == tmp_path / "int"
    assert 0 <= interrupted_at < 2000
    run_script("iql.py", "--resume", ckpt, cwd=tmp_path)
    a = final_params(next((tmp_path / "straight").glob("*/checkpoint_2000.pt")))
    b = final_params(ckpt.parent / "checkpoint_2000.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_eval_only_from_a_checkpoint(minari_root, tmp_path):
    run_script(
        "iql.py",
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--total-steps",
        20,
        "--eval-interval",
        20,
        "--eval-episodes",
        3,
        *TINY,
        cwd=tmp_path,
    )
    ckpt = next((tmp_path / "runs").glob("*/checkpoint_20.pt"))
    proc = run_script("iql.py", "--eval-only", ckpt, "--eval-episodes", 3, cwd=tmp_path)
    assert "eval-only D4RL/pointmaze/umaze-v2 | checkpoint step 20 | episodes 3 | score" in proc.stdout
    # the checkpoint's actor on the training run's own evaluation episodes (same seeds, CPU): the same score, success,
    # return and goal distance as the run's row for step 20, to the digits printed
    (row,) = csv.DictReader((ckpt.parent / "evaluations.csv").read_text().splitlines())
    expected = iql.summary_of({k: float(v) for k, v in row.items() if k != "step"})
    assert proc.stdout.strip().splitlines()[-1].endswith(f"| episodes 3 | {expected}"), (proc.stdout, expected)
    proc = run_script("iql.py", "--eval-only", ckpt, "--env-id", "D4RL/antmaze/umaze-v1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "trained on 'D4RL/pointmaze/umaze-v2', not 'D4RL/antmaze/umaze-v1'" in proc.stderr


# ---------------------------------------------------------------------------------------------- bad input
def error_of(tmp_path, *args):
    proc = run_script("iql.py", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("iql.py: error: "), proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
    return lines[-1]


def test_unknown_dataset_names_the_closest(minari_root, tmp_path):
    msg = error_of(tmp_path, "--env-id", "antmaze-medium-divers-v0")
    assert "unknown dataset 'antmaze-medium-divers-v0'" in msg and "antmaze-medium-diverse-v0" in msg


def test_d4rl_locomotion_name_points_to_minari(minari_root, tmp_path):
    msg = error_of(tmp_path, "--env-id", "hopper-medium-replay-v2")
    assert "'mujoco/hopper/medium-v0'" in msg and "not comparable" in msg


def test_missing_dataset_offline_says_how_to_get_it(minari_root, tmp_path):
    msg = error_of(tmp_path, "--env-id", "antmaze-large-play-v2")
    assert "D4RL/antmaze/large-play-v1" in msg and "MINARI_DATASETS_PATH" in msg and "minari download" in msg
    assert str(minari_root) in msg


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--expectile", "1.0", "--expectile must be in (0, 1)"),
        ("--expectile", "0", "--expectile must be in (0, 1)"),
        ("--temperature", "0", "--temperature must be > 0"),
        ("--temperature", "-3", "--temperature must be > 0"),
    ],
)
def test_bad_hyperparameters(minari_root, tmp_path, flag, value, expected):
    assert expected in error_of(tmp_path, "--env-id", "D4RL/pointmaze/umaze-v2", flag, value)


def test_compile_without_a_cxx_compiler(minari_root, tmp_path):
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    proc = run_script(
        "iql.py", "--env-id", "D4RL/antmaze/umaze-v1", "--compile", cwd=tmp_path, check=False,
        env={"PATH": str(empty_path), "CXX": ""},
    )  # fmt: skip
    assert proc.returncode == 2 and not (tmp_path / "runs").exists()
    assert "--compile needs a C++ compiler" in proc.stderr.strip().splitlines()[-1]


def test_batch_larger_than_dataset(minari_root, tmp_path):
    msg = error_of(tmp_path, "--env-id", "D4RL/antmaze/umaze-v1", "--batch-size", "100000")
    assert "--batch-size 100000 is larger than the dataset (600 transitions)" in msg


def test_corrupt_checkpoint(minari_root, tmp_path):
    bad = tmp_path / "checkpoint_5.pt"
    bad.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    assert "corrupt" in error_of(tmp_path, "--resume", bad)
    torch.save({"weights": torch.zeros(3)}, bad)
    assert "not an iql.py checkpoint" in error_of(tmp_path, "--eval-only", bad)
    assert "no checkpoint at" in error_of(tmp_path, "--resume", tmp_path / "missing.pt")


def test_resume_refuses_a_changed_hyperparameter_and_another_dataset(minari_root, tmp_path):
    run_script(
        "iql.py",
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--total-steps",
        10,
        "--eval-interval",
        10,
        "--eval-episodes",
        1,
        *TINY,
        "--runs-dir",
        tmp_path / "first",
        cwd=tmp_path,
    )
    ckpt = next((tmp_path / "first").glob("*/checkpoint_10.pt"))
    assert "--expectile cannot change when a run continues" in error_of(tmp_path, "--resume", ckpt, "--expectile", "0.6")
    assert "trained on 'D4RL/pointmaze/umaze-v2'" in error_of(
        tmp_path, "--resume", ckpt, "--env-id", "mujoco/hopper/medium-v0"
    )


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(minari_root, tmp_path):
    # exp(advantage) overflows once Q has learnt pen's large dense rewards: with the clip lifted to 3e38, the actor loss
    # becomes inf after some hundred steps
    proc = run_script(
        "iql.py",
        "--env-id",
        "pen-human-v1",
        "--total-steps",
        2000,
        "--batch-size",
        "32",
        "--log-interval",
        1,
        "--checkpoint-interval",
        10,
        "--eval-interval",
        10_000,
        "--eval-episodes",
        1,
        "--temperature",
        20,
        "--exp-adv-max",
        "3e38",
        "--critic-lr",
        "3e-3",
        "--value-lr",
        "3e-3",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    msg = proc.stderr.strip().splitlines()[-1]
    assert "non-finite loss by step" in msg and "the last good checkpoint is" in msg, msg
    bad_step = int(msg.split("by step ")[1].split()[0])
    kept = tmp_path / msg.split("the last good checkpoint is ")[1].split(". ")[0]
    steps = sorted(int(p.stem.split("_")[1]) for p in kept.parent.glob("checkpoint_*.pt"))
    assert steps[-1] == int(kept.stem.split("_")[1]) < bad_step and steps[-1] >= bad_step - 10
    assert all(torch.isfinite(v).all() for v in final_params(kept).values())


# ---------------------------------------------------------------------------------------------- evidence that it learns
class RandomActor(torch.nn.Module):
    def forward(self, obs):
        return torch.rand(len(obs), 2) * 2 - 1, None


def success_of(stdout):
    last = [line for line in stdout.splitlines() if line.startswith("step ")][-1]
    return float(last.split("success ")[1].split()[0])


def test_iql_learns_pointmaze_and_relabelling_is_what_makes_it_learn(minari_root, tmp_path):
    """On PointMaze data made the way Minari made it (waypoints, PD control, noise, goals that change on arrival),
    a short run reaches the eval goal far more often than a random policy, and only with relabelling: Minari's own
    rewards belong to each episode's goal, not to the eval goal, and never terminate."""
    import minari

    budget = [
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--total-steps",
        20_000,
        "--eval-interval",
        20_000,
        "--eval-episodes",
        100,
        "--hidden-dim",
        64,
        "--no-save-model",
    ]
    relabelled = success_of(run_script("iql.py", *budget, cwd=tmp_path).stdout)
    minari_rewards = success_of(run_script("iql.py", *budget, "--no-relabel", cwd=tmp_path).stdout)
    ds = minari.load_dataset("D4RL/pointmaze/umaze-v2")
    random_policy = iql.evaluate(
        RandomActor(),
        lambda: iql.make_eval_env(ds, ds.id, "pointmaze"),
        100,
        1 + 100_000,
        "pointmaze",
        "cpu",
        (np.full(2, -1.0), np.full(2, 1.0)),
    )["success_rate"]
    print(f"success: relabelled {relabelled:.2f}, Minari's rewards {minari_rewards:.2f}, random {random_policy:.2f}")
    # measured at this budget: seed 1 (this test) 0.60–0.78, seeds 2–3 0.93–0.98; random 0.20; Minari's rewards 0.00
    assert relabelled >= 0.5
    assert relabelled >= random_policy + 0.25
    assert relabelled >= minari_rewards + 0.4
