"""Tests for idql.py: hand-checked pieces via importlib, subprocess runs on the local test datasets (conftest.py), resume
equality, one test per bad input, and the paper's Figure 1 claim on a 2-D bandit."""

import copy
import csv
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import MAZES, assert_success_is_judged_at_the_goal_cell_centre, run_script

SCRIPT = Path(__file__).resolve().parents[1] / "idql.py"
# Small budgets: a few steps of every update, two evaluation episodes, N = 8 samples per state.
TINY = [
    "--critic-batch-size",
    "64",
    "--actor-batch-size",
    "64",
    "--num-samples",
    "8",
    "--eval-episodes",
    "2",
    "--log-interval",
    "5",
    "--checkpoint-interval",
    "10",
]
SMALL_NETS = ["--hidden-dim", "32", "--actor-hidden-dim", "32", "--actor-num-blocks", "1"]  # for runs of many steps


def load_script():
    spec = importlib.util.spec_from_file_location("idql", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def idql():
    return load_script()


def test_import_has_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_script()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- pure functions


def test_vp_beta_schedule_t5_by_hand(idql):
    # α_t = exp(−0.1/5 − 0.5 · 9.9 · (2t − 1)/25): exponents −0.218, −0.614, −1.010, −1.406, −1.802
    expected = [1 - math.exp(e) for e in (-0.218, -0.614, -1.010, -1.406, -1.802)]
    assert torch.allclose(idql.vp_beta_schedule(5), torch.tensor(expected), atol=1e-6)
    assert idql.vp_beta_schedule(5)[0].item() == pytest.approx(0.195875, abs=1e-5)
    alpha_hats = torch.cumprod(1 - idql.vp_beta_schedule(5), 0)
    assert alpha_hats[-1].item() == pytest.approx(math.exp(-(0.218 + 0.614 + 1.010 + 1.406 + 1.802)), rel=1e-5)


def test_ddpm_loss_and_noising_known_case(idql):
    noise = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert idql.ddpm_loss(torch.zeros(2, 2), noise).item() == pytest.approx((1 + 4 + 9 + 16) / 2)  # summed over dims
    assert idql.ddpm_loss(noise.clone(), noise).item() == 0.0
    actions = torch.tensor([[0.8, -0.4]])
    noisy = idql.noisy_actions(actions, torch.tensor([[1.0, 1.0]]), torch.tensor([0.64]))
    assert torch.allclose(noisy, torch.tensor([[0.8 * 0.8 + 0.6, -0.4 * 0.8 + 0.6]]))


def test_critic_losses_by_hand(idql):
    u = torch.tensor([-2.0, 1.0])
    assert idql.expectile_loss(u, 0.9).item() == pytest.approx((0.1 * 4 + 0.9 * 1) / 2)
    assert idql.quantile_loss(u, 0.8).item() == pytest.approx((0.2 * 2 + 0.8 * 1) / 2)
    a, clip = 0.5, math.log(6)
    linex = [(math.exp(a * x) - a * x - 1) / a for x in (-2.0, 1.0)]  # both below the clip
    assert idql.exponential_loss(u, a, clip).item() == pytest.approx(sum(linex) / 2, rel=1e-6)
    # above the clip the loss goes on linearly with slope e^clip − 1: finite and with a bounded gradient however large u is
    big = torch.tensor([1e6], requires_grad=True)
    loss = idql.exponential_loss(big, a, clip)
    loss.backward()
    assert torch.isfinite(loss) and big.grad.item() == pytest.approx(math.exp(clip) - 1, rel=1e-5)
    u0 = clip / a + 1.0  # one unit above the clip: the linex value at the clip plus the linear part
    expected = (math.exp(clip) - clip - 1) / a + (math.exp(clip) - 1) * 1.0
    assert idql.exponential_loss(torch.tensor([u0]), a, clip).item() == pytest.approx(expected, rel=1e-5)


def test_resampling_weights_match_the_formulas(idql):
    q, v = torch.tensor([[3.0, 0.5, -1.0, 2.0]]), torch.tensor([[1.0]])
    u = (q - v)[0].tolist()  # 2, −0.5, −2, 1
    w = idql.implicit_log_weights(q, v, "expectile", 0.7).exp()[0]
    assert torch.allclose(w, torch.tensor([0.7 if x > 0 else 0.3 for x in u]))  # Eq. (9)
    w = idql.implicit_log_weights(q, v, "quantile", 0.8).exp()[0]
    assert torch.allclose(w, torch.tensor([(0.8 if x > 0 else 0.2) / abs(x) for x in u]))  # Eq. (10)
    w = idql.implicit_log_weights(q, v, "exponential", 0.5).exp()[0]
    assert torch.allclose(w, torch.tensor([0.5 * abs(math.exp(0.5 * x) - 1) / abs(x) for x in u]))  # Eq. (12)
    # Eq. (12) in log space: finite where exp(α(Q − V)) overflows float32, and α² in the limit Q → V
    lw = idql.implicit_log_weights(torch.tensor([[500.0, 1e-9]]), torch.tensor([[0.0]]), "exponential", 1.0)[0]
    assert lw[0].item() == pytest.approx(500 - math.log(500), rel=1e-6) and lw[1].item() == pytest.approx(0.0, abs=1e-6)


def test_implicit_selection_samples_in_proportion_to_the_weights(idql):
    actions = torch.arange(4.0).view(1, 4, 1).expand(20000, 4, 1)
    log_w = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).expand(20000, 4)
    chosen = idql.select_actions(actions, torch.zeros(20000, 4), log_w, "implicit", torch.Generator().manual_seed(0))
    freq = torch.bincount(chosen[:, 0].long(), minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015)


class SumQ(torch.nn.Module):
    """A stand-in twin critic: Q1 = a1 + a2, Q2 = Q1 + 1 (so min picks Q1)."""

    def forward(self, obs, actions):
        q = actions.sum(-1)
        return torch.stack([q, q + 1])


def test_argmax_selection_returns_the_highest_q_sample(idql):
    torch.manual_seed(0)
    net = idql.ScoreNetwork(3, 2, 32, 2, 0.0).eval()
    betas, obs = idql.vp_beta_schedule(5), torch.randn(6, 3)
    chosen = idql.idql_actions(obs, net, SumQ(), None, betas, 16, "argmax", "expectile", 0.7, torch.Generator().manual_seed(3))
    # the same generator seed reproduces the 6 x 16 candidates that idql_actions drew
    candidates = idql.ddpm_sample(net, obs.repeat_interleave(16, 0), betas, 2, torch.Generator().manual_seed(3)).view(6, 16, 2)
    best = candidates.sum(-1).argmax(1)
    assert torch.equal(chosen, candidates[torch.arange(6), best])
    assert (candidates.sum(-1).std(1) > 0).all()  # the candidates differ, so the choice is not trivial


def test_sampled_actions_stay_within_bounds(idql):
    torch.manual_seed(0)
    net = idql.ScoreNetwork(4, 3, 32, 2, 0.1).eval()
    with torch.no_grad():
        net.fc_out.weight.mul_(100.0)  # a wild score network: its raw steps land far outside [−1, 1]
    obs = torch.randn(512, 4)
    actions = idql.ddpm_sample(net, obs, idql.vp_beta_schedule(5), 3)
    assert actions.abs().max() <= 1.0 and (actions.abs() == 1.0).any()
    vf = idql.ValueNetwork(4, 16)
    chosen = idql.idql_actions(obs[:32], net, SumQ(), vf, idql.vp_beta_schedule(5), 8, "implicit", "quantile", 0.6)
    assert chosen.shape == (32, 3) and chosen.abs().max() <= 1.0


def test_target_and_ema_updates_stay_outside_autograd(idql):
    """The Polyak (target Q) and EMA (score network) updates: exact lerp, and no graph: with autograd recording the
    update, every step linked the copies into a graph that grew without bound (and left them requiring grad)."""
    torch.manual_seed(0)
    for source in (idql.TwinQNetwork(3, 2, 16), idql.ScoreNetwork(3, 2, 16, 1, 0.0)):
        target = copy.deepcopy(source).requires_grad_(False)
        with torch.no_grad():
            for p in source.parameters():
                p.add_(1.0)
        before = [p.clone() for p in target.parameters()]
        for _ in range(3):
            idql.polyak_update(target, source, 0.1)
        for p_t, p, b in zip(target.parameters(), source.parameters(), before):
            assert not p_t.requires_grad and p_t.grad_fn is None
            assert torch.allclose(p_t, b + (1 - 0.9**3) * (p - b), atol=1e-6)


def test_each_step_moves_the_target_and_the_ema_once_at_their_rates(minari_root, tmp_path):
    """In a run, each step moves the target twin-Q towards Q by --tau and the EMA score network towards the trained one
    by --ema-rate, once, after that step's update (read off the checkpoints of consecutive steps); the target stops
    with the critic's steps. Rates unlike the defaults and unlike each other, so that a swapped rate shows."""
    flags = ["--env-id", "D4RL/pointmaze/umaze-v2", "--critic-steps", "4", "--actor-steps", "6", "--tau", "0.1"]
    flags += ["--ema-rate", "0.2", *TINY[:6], *SMALL_NETS, "--eval-interval", "100", "--eval-episodes", "1"]
    run_script("idql.py", *flags, "--checkpoint-interval", "1", cwd=tmp_path)
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = {t: torch.load(run_dir / f"checkpoint_{t}.pt", weights_only=True) for t in range(1, 7)}
    for t in range(2, 7):
        before, after = ckpt[t - 1], ckpt[t]
        for k, v in after["actor_ema"].items():  # θ_ema ← lerp(θ_ema, θ, ema_rate), the op polyak_update runs
            assert torch.equal(v, torch.lerp(before["actor_ema"][k], after["actor"][k], 0.2)), (t, k)
            assert not torch.equal(v, before["actor_ema"][k]), (t, k)
        for k, v in after["qf_target"].items():
            expected = torch.lerp(before["qf_target"][k], after["qf"][k], 0.1) if t <= 4 else before["qf_target"][k]
            assert torch.equal(v, expected), (t, k)


def test_sample_batch_keeps_each_transition_whole(idql):
    n = torch.arange(1000.0).view(-1, 1)
    rows = torch.cat([n, n, n, n, n, n + 1, n + 1, n + 1, n], 1)  # obs (3) | action | reward | next obs (3) | mask
    b = idql.to_batch(rows[torch.randint(len(rows), (256,))], 3, 1)  # as the training loop samples its batches
    assert b.rewards.unique().numel() > 100  # drawn at random
    for field in (b.observations[:, 0], b.observations[:, 2], b.actions[:, 0], b.next_observations[:, 1] - 1, b.masks):
        assert torch.equal(field, b.rewards)  # obs, action, reward, next obs and mask of the same transition


def fake_episode(achieved, actions, rewards=None):
    n = len(actions)
    obs = dict(observation=np.arange(2 * (n + 1), dtype=np.float32).reshape(n + 1, 2), achieved_goal=np.asarray(achieved))
    return SimpleNamespace(
        observations=obs,
        actions=np.asarray(actions, np.float32),
        terminations=np.zeros(n, bool),
        rewards=np.zeros(n) if rewards is None else np.asarray(rewards),
    )


def test_transitions_rescale_actions_and_relabel_dense_mazes(idql):
    # invertedpendulum's action space is [−3, 3], pusher's [−2, 2]: the data is mapped onto [−1, 1] (then clipped)
    ep = fake_episode(np.zeros((4, 2)), [[-3.0, 0.0], [1.5, 2.0], [3.0, -2.0]])
    _, actions, *_ = idql.episode_transitions(ep, "pointmaze", None, action_scale=(np.float32([-3, -2]), np.float32([3, 2])))
    assert np.allclose(actions, [[-1 + 1e-5, 0.0], [0.5, 1 - 1e-5], [1 - 1e-5, -1 + 1e-5]])
    # relabelled mazes: terminal within 0.5 of the goal; reward 0/1, or exp(−distance) for the dense datasets
    ep = fake_episode([[9, 9], [3, 0], [0.3, 0], [0, 0.4]], [[0, 0]] * 3)
    goal = np.zeros(2)
    *_, rewards, _, masks = idql.episode_transitions(ep, "pointmaze", goal)
    assert rewards.tolist() == [0, 1, 1] and masks.tolist() == [1, 0, 0]
    *_, rewards, _, masks = idql.episode_transitions(ep, "pointmaze", goal, dense=True)
    assert np.allclose(rewards, np.exp([-3, -0.3, -0.4])) and masks.tolist() == [1, 0, 0]


def test_locomotion_reward_scaling(idql):
    rewards = np.array([1.0, 2.0], np.float32)
    assert np.allclose(idql.preprocess_rewards(rewards, np.array([10.0, 510.0]), "locomotion"), [2.0, 4.0])
    # equal returns (invertedpendulum expert: every episode 1000): unchanged, no longer ×1e9
    assert np.array_equal(idql.preprocess_rewards(rewards, np.array([1000.0, 1000.0]), "locomotion"), rewards)
    assert np.array_equal(idql.preprocess_rewards(rewards, np.array([0.0, 5.0]), "pointmaze"), rewards - 1)


class RecordingEnv(gym.Env):
    """One-step episodes that record the actions they are given."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,))
    action_space = gym.spaces.Box(np.float32([-3, -2, 0]), np.float32([3, 2, 4]))

    def __init__(self, log):
        self.log = log

    def reset(self, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.log.append(action)
        return np.zeros(3, np.float32), 1.0, True, False, {}

    def close(self):
        pass


def test_evaluate_maps_actions_back_to_the_action_space(idql):
    log = []
    policy = lambda obs, generator: torch.tensor([[-1.0, 0.0, 1.0]]).expand(len(obs), 3)  # noqa: E731
    scale = (np.float32([-3, -2, 0]), np.float32([3, 2, 4]))
    result = idql.evaluate(policy, lambda: RecordingEnv(log), 2, 0, "locomotion", "cpu", scale)
    assert result["mean_return"] == 1.0 and np.allclose(log, [[-3, 0, 4]] * 2)


@pytest.mark.parametrize("dataset_id", MAZES)
def test_maze_success_is_judged_at_the_relabelling_goal(idql, minari_root, dataset_id):
    """Success (and the terminal and reward) is judged where the data was relabelled: within 0.5 of the
    goal cell's centre, whatever goal the env drew at reset."""
    import minari

    env = idql.make_eval_env(minari.load_dataset(dataset_id), dataset_id, idql.domain_of(dataset_id))
    assert_success_is_judged_at_the_goal_cell_centre(env)


# ---------------------------------------------------------------- Figure 1: a 2-D bandit with three reward clusters

CENTRES = torch.tensor([[-0.5, -0.5], [-0.4, 0.6], [0.6, -0.2]])  # low, medium, high reward under r = a1 + a2
RADIUS = 0.2  # 4 standard deviations of each cluster


def test_bandit_diffusion_argmax_finds_the_best_cluster_awr_gaussian_does_not(idql):
    """Figure 1's claim: the critic's implicit policy is multimodal; a Gaussian fitted with AWR lands between the modes,
    diffusion samples + argmax Q land in the best one. T = 50 here, the paper's choice for 2-D datasets (appendix F.3):
    with T = 5 the last denoising step averages over clusters this far apart and too few samples land in any."""
    torch.manual_seed(0)
    n = 3000
    actions = (CENTRES[torch.arange(n) % 3] + 0.05 * torch.randn(n, 2)).clamp(-1, 1)
    rewards, obs = actions.sum(1) + 0.1 * torch.randn(n), torch.zeros(n, 1)  # one state; γ = 0 so Q = E[r | a]
    qf, vf = idql.TwinQNetwork(1, 2, 64), idql.ValueNetwork(1, 64)
    q_opt, v_opt = torch.optim.Adam(qf.parameters(), 1e-3), torch.optim.Adam(vf.parameters(), 1e-3)
    for _ in range(1500):
        idx = torch.randint(n, (256,))
        loss = (qf(obs[idx], actions[idx]) - rewards[idx]).square().mean(1).sum()
        q_opt.zero_grad()
        loss.backward()
        q_opt.step()
    with torch.no_grad():
        q_data = qf(obs, actions).min(0).values
    for _ in range(1000):
        idx = torch.randint(n, (256,))
        loss = idql.expectile_loss(q_data[idx] - vf(obs[idx]), 0.7)
        v_opt.zero_grad()
        loss.backward()
        v_opt.step()

    # IDQL: a DDPM behaviour model (the script's LN-ResNet, narrower), then N = 64 samples and argmax of the twin-Q min
    T, betas = 50, idql.vp_beta_schedule(50)
    alpha_hats = torch.cumprod(1 - betas, 0)
    net = idql.ScoreNetwork(1, 2, 64, 3, 0.1)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3000):
        idx, t, noise = torch.randint(n, (256,)), torch.randint(T, (256,)), torch.randn(256, 2)
        loss = idql.ddpm_loss(net(idql.noisy_actions(actions[idx], noise, alpha_hats[t]), obs[idx], t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    generator = torch.Generator().manual_seed(1)
    chosen = idql.idql_actions(torch.zeros(100, 1), net, qf, vf, betas, 64, "argmax", "expectile", 0.7, generator)
    diffusion_in_best = ((chosen - CENTRES[2]).norm(dim=1) <= RADIUS).float().mean().item()

    # IQL's extraction: a state-independent Gaussian fitted by AWR, weights exp(3 (Q − V)) clipped at 100
    with torch.no_grad():
        weights = torch.exp(3.0 * (q_data - vf(obs))).clamp(max=100)
    mean, log_std = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([mean, log_std], 1e-2)
    for _ in range(2000):
        idx = torch.randint(n, (256,))
        log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions[idx]).sum(-1)
        loss = -(weights[idx] * log_prob).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gaussian = torch.distributions.Normal(mean.detach(), log_std.exp().detach()).sample((10000,)).clamp(-1, 1)
    awr_in_best = ((gaussian - CENTRES[2]).norm(dim=1) <= RADIUS).float().mean().item()
    awr_in_any = ((gaussian[:, None] - CENTRES[None]).norm(dim=-1).min(1).values <= RADIUS).float().mean().item()
    print(
        f"bandit: diffusion+argmax in best cluster {diffusion_in_best:.3f}; AWR Gaussian in best cluster {awr_in_best:.3f}, "
        f"in any cluster {awr_in_any:.3f}, mean {mean.detach().numpy().round(3)} (best centre {CENTRES[2].numpy()})"
    )
    assert diffusion_in_best >= 0.9
    assert awr_in_best < 0.5 and (mean.detach() - CENTRES[2]).norm() > RADIUS  # mostly outside the best cluster


# ---------------------------------------------------------------- subprocess runs


def eval_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith("step ")]


def event_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.fixture(scope="module")
def pointmaze_run(minari_root, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("idql_pointmaze")
    proc = run_script(
        "idql.py",
        "--env-id",
        "maze2d-umaze-v1",
        "--critic-steps",
        "20",
        "--actor-steps",
        "20",
        "--eval-interval",
        "10",
        "--seed",
        "7",
        *TINY,
        cwd=cwd,
        timeout=300,
    )
    (run_dir,) = (cwd / "runs").iterdir()
    return proc, run_dir


def test_smoke_pointmaze(pointmaze_run):
    proc, run_dir = pointmaze_run
    print("\n".join(eval_lines(proc.stdout)))
    assert "IDQL on D4RL/pointmaze/umaze-v2 (pointmaze" in proc.stdout and "expectile=0.9" in proc.stdout
    lines = eval_lines(proc.stdout)
    assert len(lines) == 2 and lines[-1].startswith("step       20/20 | score ") and "updates/s | ETA" in lines[-1]
    assert "| goal distance " in lines[-1]
    with open(run_dir / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["10", "20"]  # one row per evaluation
    assert list(rows[0]) == ["step", "score", "success_rate", "mean_return", "goal_distance"]
    assert proc.stdout.splitlines()[-1].startswith("last score ") and "all evaluations: runs/" in proc.stdout.splitlines()[-1]
    assert {p.name for p in run_dir.glob("*.pt")} == {"checkpoint_10.pt", "checkpoint_20.pt"}
    tags = event_tags(run_dir)
    assert {
        "losses/vf_loss",
        "losses/qf_loss",
        "losses/actor_loss",
        "values/q",
        "values/v",
        "values/advantage",
        "charts/SPS",
        "charts/learning_rate",
        "eval/return",
        "eval/normalized_score",
        "eval/success_rate",
        "eval/goal_distance",
    } <= tags


def test_smoke_antmaze_quantile_implicit(minari_root, tmp_path):
    proc = run_script(
        "idql.py",
        "--env-id",
        "antmaze-medium-diverse-v2",
        "--critic-loss",
        "quantile",
        "--selection",
        "implicit",
        "--critic-steps",
        "10",
        "--actor-steps",
        "6",
        "--eval-interval",
        "10",
        *TINY,
        cwd=tmp_path,
        timeout=300,
    )
    print("\n".join(eval_lines(proc.stdout)))
    assert "quantile=0.8" in proc.stdout and "(antmaze, 600 transitions, obs 29, act 8)" in proc.stdout
    assert len(eval_lines(proc.stdout)) == 1 and "score " in eval_lines(proc.stdout)[0]
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = torch.load(run_dir / "checkpoint_10.pt", weights_only=True)
    assert ckpt["format"] == "idql.py checkpoint v2" and ckpt["step"] == 10
    assert ckpt["actor_optimizer"]["step_count"].item() == 6  # the actor stopped after its own 6 steps


def evaluation_rows(run_dir):
    with open(run_dir / "evaluations.csv") as f:
        return list(csv.DictReader(f))


def row_summary(idql, row):
    """The summary an evaluation prints, from its row of evaluations.csv."""
    return idql.summary_of({k: float(v) if v else None for k, v in row.items() if k != "step"})


@pytest.fixture(scope="module")
def pen_runs(minari_root, tmp_path_factory):
    """The same 20 steps on pen (dense rewards: the return tells two policies apart), evaluated at steps 10 and 20 with
    argmax selection and at step 20 only with --selection implicit: {selection: run folder}."""
    cwd = tmp_path_factory.mktemp("idql_pen")
    flags = ["--env-id", "D4RL/pen/human-v2", "--critic-steps", "20", "--actor-steps", "20", "--seed", "7", *TINY]
    for selection, every in [("argmax", "10"), ("implicit", "20")]:
        run_script(
            "idql.py", *flags, "--eval-interval", every, "--selection", selection, "--runs-dir", cwd / selection, cwd=cwd
        )
    return {selection: next((cwd / selection).iterdir()) for selection in ("argmax", "implicit")}


def test_eval_only(idql, pointmaze_run, pen_runs, tmp_path):
    _, run_dir = pointmaze_run
    proc = run_script(
        "idql.py", "--eval-only", run_dir / "checkpoint_20.pt", "--eval-episodes", "3", "--num-samples", "4", cwd=tmp_path
    )
    assert "eval-only D4RL/pointmaze/umaze-v2 | checkpoint step 20 | episodes 3 | N 4 argmax | score " in proc.stdout
    assert not (tmp_path / "runs").exists()
    assert proc.stdout.rstrip().endswith("| seed 7")  # the checkpoint's settings are the defaults, its seed included
    proc = run_script(
        "idql.py", "--eval-only", run_dir / "checkpoint_20.pt", "--eval-episodes", "1", "--seed", "3", cwd=tmp_path
    )
    assert "episodes 1 | N 8 argmax" in proc.stdout and proc.stdout.rstrip().endswith("| seed 3")  # flags override them
    # with the checkpoint's own settings (2 episodes, N 8, argmax, seed 7) it scores what the run's evaluation of step 20
    # did (same networks, episodes and noise, CPU): the same score and return, to the digits printed
    proc = run_script("idql.py", "--eval-only", pen_runs["argmax"] / "checkpoint_20.pt", cwd=tmp_path)
    (row,) = [row for row in evaluation_rows(pen_runs["argmax"]) if row["step"] == "20"]
    assert proc.stdout.rstrip().endswith(f"| episodes 2 | N 8 argmax | {row_summary(idql, row)} | seed 7"), proc.stdout


def test_evaluation_leaves_the_training_rng_alone(pen_runs):
    """Evaluation draws its noise from a generator seeded apart from training (README): a run evaluated at step 10 and
    one that is not (and that selects by resampling, a draw more) reach step 20 bit for bit alike."""
    assert [r["step"] for r in evaluation_rows(pen_runs["argmax"])] == ["10", "20"]
    assert [r["step"] for r in evaluation_rows(pen_runs["implicit"])] == ["20"]
    a, b = (torch.load(pen_runs[s] / "checkpoint_20.pt", weights_only=True) for s in ("argmax", "implicit"))
    assert_same(*({k: v for k, v in c.items() if k not in ("args", "run_name", "evaluations")} for c in (a, b)))


def test_eval_only_takes_another_selection(idql, pen_runs, tmp_path):
    """--eval-only --selection implicit scores an argmax run's checkpoint as the run trained with --selection implicit
    scored its own (the same networks: see the test above), not as the argmax run did."""
    ckpt = pen_runs["argmax"] / "checkpoint_20.pt"
    proc = run_script("idql.py", "--eval-only", ckpt, "--selection", "implicit", cwd=tmp_path)
    (argmax,) = [row for row in evaluation_rows(pen_runs["argmax"]) if row["step"] == "20"]
    (implicit,) = evaluation_rows(pen_runs["implicit"])
    assert row_summary(idql, implicit) != row_summary(idql, argmax)  # the two selections score these networks apart
    assert proc.stdout.rstrip().endswith(f"| N 8 implicit | {row_summary(idql, implicit)} | seed 7"), proc.stdout


def assert_same(a, b, path="checkpoint"):
    """Equal down to every tensor element (state dicts, optimiser and scheduler states, RNG states, step)."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_compile_traces_both_updates_whole_and_matches_eager(minari_root, tmp_path):
    """--compile traces each update as one graph (fullgraph=True: any split is an error) and computes what eager does,
    step after step, so that Adam's bias corrections at t = 2, 3, ... are checked too. Compiled, the actor's random
    draws would come from inductor's own random stream; with torch._inductor.config.fallback_random they come from
    torch's generator, as eager's do (the rest of the graph is compiled as ever), so every network can be compared."""
    flags = ["--env-id", "D4RL/pointmaze/umaze-v2", "--critic-steps", "10", "--actor-steps", "10", "--eval-interval", "100"]
    flags += [*TINY[:6], "--eval-episodes", "1", "--checkpoint-interval", "1", *SMALL_NETS]
    wrapper = tmp_path / "idql_eager_random.py"  # idql.py as __main__, after setting inductor's option
    wrapper.write_text(
        "import runpy, sys\nimport torch._inductor.config\n\ntorch._inductor.config.fallback_random = True\n"
        f"sys.argv[0] = {str(SCRIPT)!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    for name, script, extra in [("eager", "idql.py", []), ("compiled", wrapper, ["--compile"])]:
        (tmp_path / name).mkdir()
        proc = run_script(script, *flags, *extra, cwd=tmp_path / name)
        assert "step       10/10 | score" in proc.stdout and f"compile={bool(extra)}" in proc.stdout
    for step in range(1, 11):
        eager, compiled = (
            torch.load(next((tmp_path / n).glob(f"runs/*/checkpoint_{step}.pt")), weights_only=True)
            for n in ("eager", "compiled")
        )
        # same math, other kernels (eager Adam is torch's fused one): measured max difference 1.2e-7 after 10 steps; Adam
        # with its step-1 bias corrections held at every step moves the parameters by ~1e-4 from step 2 on
        for net in ["actor", "actor_ema", "qf", "qf_target", "vf"]:
            assert all(torch.allclose(eager[net][k], compiled[net][k], rtol=0, atol=1e-5) for k in eager[net]), (step, net)
    assert any(not torch.equal(eager["actor"][k], compiled["actor"][k]) for k in eager["actor"])  # compiled code ran


def test_resume_equals_a_straight_run(minari_root, tmp_path):
    """N straight steps == N/2 steps + resume from a copy of that checkpoint in another directory + N/2 steps."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    flags = [
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--critic-loss",
        "exponential",
        "--critic-steps",
        "20",
        "--actor-steps",
        "16",
        "--eval-interval",
        "100",
        "--eval-episodes",
        "1",
        *TINY[:6],
        "--log-interval",
        "5",
        "--checkpoint-interval",
        "10",
    ]
    run_script("idql.py", *flags, cwd=straight)
    (run_dir,) = (straight / "runs").iterdir()
    shutil.copy(run_dir / "checkpoint_10.pt", resumed / "checkpoint_10.pt")
    shutil.copy(run_dir / "evaluations.csv", resumed / "evaluations.csv")  # holds step 20's row, to be purged and redone
    proc = run_script("idql.py", "--resume", resumed / "checkpoint_10.pt", cwd=tmp_path)
    assert proc.stdout.startswith("continuing ") and " from step 10 (" in proc.stdout.splitlines()[0]
    a = torch.load(run_dir / "checkpoint_20.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint_20.pt", weights_only=True)  # written into the checkpoint's directory
    assert b["run_name"] == "resumed"  # a run is named after its folder
    assert_same(*({k: v for k, v in c.items() if k not in ("args", "run_name")} for c in (a, b)))
    assert (resumed / "evaluations.csv").read_text() == (run_dir / "evaluations.csv").read_text()
    halfway = torch.load(resumed / "checkpoint_10.pt", weights_only=True)
    assert not torch.equal(a["actor"]["fc_out.weight"], halfway["actor"]["fc_out.weight"])  # the second half did train


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes_to_the_same_result(minari_root, tmp_path):
    flags = ["--env-id", "D4RL/pointmaze/umaze-v2", "--critic-steps", "2000", "--actor-steps", "2000", *TINY[:6], *SMALL_NETS]
    flags += ["--eval-interval", "2000", "--eval-episodes", "1", "--checkpoint-interval", "50"]
    for name in ["straight", "interrupted"]:
        (tmp_path / name).mkdir()
    run_script("idql.py", *flags, cwd=tmp_path / "straight")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *flags],
        cwd=tmp_path / "interrupted",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # the signal goes once step 50's checkpoint exists (written by renaming: whole), i.e. the loop runs, with 1950 of
    # its 2000 steps (~3 s here) still to go: it cannot miss the run, however fast the machine
    deadline = time.time() + 120
    while not list((tmp_path / "interrupted").glob("runs/*/checkpoint_50.pt")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "interrupted by SIGINT at step" in stdout and "--resume" in stdout
    step = int(stdout.split("interrupted by SIGINT at step ")[1].split(";")[0])
    (run_dir,) = (tmp_path / "interrupted" / "runs").iterdir()
    assert step > 0 and torch.load(run_dir / f"checkpoint_{step}.pt", weights_only=True)["step"] == step
    resume = stdout.split("continue with: python idql.py --resume ")[1].split()[0]  # as the script says to continue
    assert step < 2000 and resume == f"runs/{run_dir.name}/checkpoint_{step}.pt"
    run_script("idql.py", "--resume", resume, cwd=tmp_path / "interrupted")
    a, b = (
        torch.load(next((tmp_path / n).glob("runs/*/checkpoint_2000.pt")), weights_only=True)
        for n in ("straight", "interrupted")
    )
    assert_same(*({k: v for k, v in c.items() if k not in ("args", "run_name")} for c in (a, b)))


# ---------------------------------------------------------------- bad input: a one-line error before any training work


def assert_fails(cwd, *args, expect):
    proc = run_script("idql.py", *args, cwd=cwd, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("idql.py: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    for text in expect:
        assert text in errors[0], errors[0]
    assert not (Path(cwd) / "runs").exists()  # nothing was started
    return errors[0]


def test_unknown_dataset_names_the_closest(minari_root, tmp_path):
    assert_fails(tmp_path, "--env-id", "antmaze-medium-divrse-v2", expect=["unknown dataset", "antmaze-medium-diverse-v2"])


def test_d4rl_locomotion_name_points_to_minari(minari_root, tmp_path):
    assert_fails(tmp_path, "--env-id", "hopper-medium-v2", expect=["Minari does not carry", "mujoco/hopper/medium-v0"])


def test_dataset_absent_offline(minari_root, tmp_path):
    assert_fails(
        tmp_path,
        "--env-id",
        "antmaze-large-play-v2",
        expect=["cannot load Minari dataset 'D4RL/antmaze/large-play-v1'", "minari download"],
    )


def test_bad_hyperparameter(minari_root, tmp_path):
    assert_fails(
        tmp_path, "--env-id", "D4RL/pointmaze/umaze-v2", "--expectile", "1.5", expect=["--expectile must be in (0, 1)"]
    )


def test_hyperparameter_of_another_critic_loss(minari_root, tmp_path):
    assert_fails(
        tmp_path,
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--quantile",
        "0.7",
        expect=["--quantile belongs to --critic-loss quantile", "not expectile"],
    )


def test_batch_larger_than_dataset(minari_root, tmp_path):
    assert_fails(
        tmp_path, "--env-id", "D4RL/antmaze/umaze-v1", "--actor-batch-size", "5000", expect=["exceed the dataset", "600"]
    )


def test_checkpoint_from_another_dataset(pointmaze_run, tmp_path):
    _, run_dir = pointmaze_run
    assert_fails(
        tmp_path,
        "--resume",
        run_dir / "checkpoint_10.pt",
        "--env-id",
        "D4RL/antmaze/umaze-v1",
        expect=["trained on 'D4RL/pointmaze/umaze-v2'", "drop --env-id"],
    )


def test_corrupt_checkpoint(minari_root, tmp_path):
    (tmp_path / "checkpoint_5.pt").write_bytes(b"not a checkpoint" * 10)
    assert_fails(tmp_path, "--resume", tmp_path / "checkpoint_5.pt", expect=["corrupt"])


def test_checkpoint_of_another_script(minari_root, tmp_path):
    torch.save(dict(format="iql.py checkpoint v1", step=1), tmp_path / "iql.pt")
    assert_fails(tmp_path, "--eval-only", tmp_path / "iql.pt", expect=["not an idql.py checkpoint"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(minari_root, tmp_path):
    # a learning rate of 1e30 puts weights at ~1e30 after one Adam step; the next forward pass overflows
    proc = run_script(
        "idql.py",
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--critic-lr",
        "1e30",
        "--critic-steps",
        "50",
        "--actor-steps",
        "50",
        *TINY[:6],
        "--log-interval",
        "1",
        "--checkpoint-interval",
        "1",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "non-finite loss by step" in proc.stderr
    kept = proc.stderr.split("the last good checkpoint is ")[1].split(".pt")[0] + ".pt"
    step = int(kept.rsplit("_", 1)[1][:-3])
    assert (tmp_path / kept).exists() and not ((tmp_path / kept).parent / f"checkpoint_{step + 1}.pt").exists()
    ckpt = torch.load(tmp_path / kept, weights_only=True)  # good: every network's weights are finite numbers
    assert all(torch.isfinite(v).all() for net in ["actor", "actor_ema", "qf", "qf_target", "vf"] for v in ckpt[net].values())


def test_idql_learns_pointmaze(idql, minari_root, tmp_path):
    """On the tests' PointMaze data (30k steps of waypoint control), a short run with small networks reaches the eval
    goal far more often than a random policy. Measured at this budget (one thread, ~70 s a run), success at 20k
    critic / 5k actor steps, seeds 1-5: 0.86 (this test's seed), 1.00, 0.99, 0.74, 0.99; random policy 0.13."""
    import minari

    proc = run_script(
        "idql.py",
        "--env-id",
        "D4RL/pointmaze/umaze-v2",
        "--critic-steps",
        20_000,
        "--actor-steps",
        5_000,
        "--actor-batch-size",
        256,
        "--actor-hidden-dim",
        64,
        "--actor-num-blocks",
        2,
        "--hidden-dim",
        64,
        "--num-samples",
        16,
        "--eval-interval",
        20_000,
        "--eval-episodes",
        100,
        "--no-save-model",
        cwd=tmp_path,
    )
    learned = float(eval_lines(proc.stdout)[-1].split("success ")[1].split()[0])
    ds = minari.load_dataset("D4RL/pointmaze/umaze-v2")
    random_policy = lambda obs, generator: torch.rand(len(obs), 2, generator=generator) * 2 - 1  # noqa: E731
    make_env = lambda: idql.make_eval_env(ds, ds.id, "pointmaze")  # noqa: E731
    scale = (np.full(2, -1.0), np.full(2, 1.0))
    random_success = idql.evaluate(random_policy, make_env, 100, 1 + 100_000, "pointmaze", "cpu", scale)["success_rate"]
    print(f"success: idql {learned:.2f}, random {random_success:.2f}")
    assert learned >= 0.6 and learned >= random_success + 0.35
