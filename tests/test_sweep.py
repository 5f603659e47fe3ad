"""Runs that survive a cluster: SIGINT, SIGTERM and SIGUSR1 checkpoint and exit with 128 + the signal, --run-name
continues a run with the same command, benchmark/results.py turns run folders into the papers' table and curves, and
benchmark/sweep.sbatch on a real one-node SLURM (tests/start_slurm.sh; skipped where no SLURM answers)."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_script

POINTMAZE = "D4RL/pointmaze/umaze-v2"
# Long runs (a signal stops them), checkpointed often, with tiny networks.
LONG = {
    "iql.py": ["--total-steps", 10**6, "--batch-size", 64, "--hidden-dim", 64],
    "idql.py": ["--critic-steps", 10**6, "--actor-steps", 10**6, "--critic-batch-size", 64, "--actor-batch-size", 64,
                "--hidden-dim", 32, "--actor-hidden-dim", 32, "--actor-num-blocks", 1, "--num-samples", 4],
    "iql_finetune.py": ["--offline-steps", 20, "--online-steps", 10**6, "--batch-size", 64, "--hidden-dim", 64],
}  # fmt: skip


def start(script, *args, cwd):
    cmd = [sys.executable, str(ROOT / script), "--env-id", POINTMAZE, *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def params(path):
    ckpt = torch.load(path, weights_only=True)
    return {f"{net}.{k}": v for net in ["actor", "qf", "qf_target", "vf"] for k, v in ckpt[net].items()}


# ---------------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("script", ["iql.py", "idql.py", "iql_finetune.py"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=lambda sig: sig.name)
def test_a_signal_checkpoints_the_step_and_exits_with_128_plus_its_number(minari_root, tmp_path, script, sig):
    run_dir = tmp_path / "runs" / "r"
    flags = ["--run-name", "r", "--checkpoint-interval", 50, "--eval-interval", 10**6, "--eval-episodes", 1]
    proc = start(script, *LONG[script], *flags, cwd=tmp_path)
    wait_for(lambda: (run_dir / "checkpoint_50.pt").exists(), proc)  # training, past its first checkpoint
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    m = re.search(rf"^interrupted by {sig.name} at step (\d+); continue with: python {script} --resume (\S+)$", out, re.M)
    assert m, out[-2000:]
    step, path = int(m[1]), Path(tmp_path, m[2])
    assert step > 50 and path == run_dir / f"checkpoint_{step}.pt" and torch.load(path, weights_only=True)["step"] == step
    assert not list(run_dir.glob("*.tmp"))


def test_a_signal_during_an_evaluation_checkpoints_that_step(minari_root, tmp_path):
    """The signal lands in the first evaluation (100 episodes, ~10 s; the 100 steps before it take a tenth of a
    second): the run finishes the evaluation, then checkpoints step 100 with it. No checkpoint is due otherwise."""
    run_dir = tmp_path / "runs" / "r"
    flags = ["--run-name", "r", "--eval-interval", 100, "--eval-episodes", 100, "--checkpoint-interval", 10**6]
    proc = start("iql.py", *LONG["iql.py"], *flags, cwd=tmp_path)
    wait_for(lambda: list(run_dir.glob("events*")), proc)  # the writer exists: training starts now
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM at step 100;" in out and out.count("\nstep      100/") == 1
    assert [p.name for p in run_dir.glob("*.pt")] == ["checkpoint_100.pt"]
    assert [row["step"] for row in torch.load(run_dir / "checkpoint_100.pt", weights_only=True)["evaluations"]] == [100]


def test_a_second_signal_does_not_break_the_checkpoint(minari_root, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    proc = start("iql.py", *LONG["iql.py"], "--run-name", "r", "--checkpoint-interval", 50, cwd=tmp_path)
    wait_for(lambda: (run_dir / "checkpoint_50.pt").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)  # while the step finishes and the checkpoint is written
    out, _ = proc.communicate(timeout=120)
    name, step = re.search(r"interrupted by (SIGTERM|SIGINT) at step (\d+)", out).groups()  # the one handled first
    assert proc.returncode == 128 + signal.Signals[name]
    assert torch.load(run_dir / f"checkpoint_{step}.pt", weights_only=True)["step"] == int(step)
    assert not list(run_dir.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------- --run-name
SHORT = ["--env-id", POINTMAZE, "--total-steps", 300, "--eval-interval", 100, "--eval-episodes", 2, "--checkpoint-interval",
         50, "--batch-size", 64, "--hidden-dim", 64, "--log-interval", 50, "--run-name", "r"]  # fmt: skip


def test_the_same_command_continues_the_run(minari_root, tmp_path):
    run_script("iql.py", *SHORT, "--runs-dir", tmp_path / "straight", cwd=tmp_path)
    straight, run_dir = tmp_path / "straight" / "r", tmp_path / "runs" / "r"
    proc = start("iql.py", *SHORT[2:], cwd=tmp_path)
    wait_for(lambda: (run_dir / "checkpoint_150.pt").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert out.startswith("starting r; its files go to runs/r\n") and proc.returncode == 143
    newest = max(int(p.stem.split("_")[1]) for p in run_dir.glob("checkpoint_*.pt"))
    assert newest < 300
    (run_dir / f"checkpoint_{newest}.pt").write_bytes(b"cut short by a full disk")  # unreadable: fall back
    (run_dir / "checkpoint_290.pt.tmp").write_bytes(b"left over")  # a checkpoint being written when a node died

    proc = run_script("iql.py", *SHORT, cwd=tmp_path)
    older = max(int(p.stem.split("_")[1]) for p in run_dir.glob("checkpoint_*.pt") if int(p.stem.split("_")[1]) < newest)
    assert proc.stdout.startswith(f"continuing r from step {older} (runs/r/checkpoint_{older}.pt); its files go to ")
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"checkpoint_{newest}.pt" in warnings[0] and "trying an older one" in warnings[0]
    assert all(torch.equal(a, b) for a, b in zip(params(straight / "checkpoint_300.pt").values(),
                                                 params(run_dir / "checkpoint_300.pt").values()))  # fmt: skip
    assert (run_dir / "evaluations.csv").read_text() == (straight / "evaluations.csv").read_text()

    written = (run_dir / "checkpoint_300.pt").stat().st_mtime_ns
    proc = run_script("iql.py", *SHORT, cwd=tmp_path)  # the run is complete: its summary, no training
    assert proc.stdout.startswith("continuing r from step 300 ") and "\nstep " not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("last score ")
    assert (run_dir / "checkpoint_300.pt").stat().st_mtime_ns == written

    proc = run_script("iql.py", *SHORT, "--expectile", 0.6, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--expectile cannot change when a run continues" in proc.stderr.strip()
    proc = run_script("idql.py", "--env-id", POINTMAZE, "--run-name", "r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is a run of iql.py, not of idql.py; give another --run-name" in proc.stderr
    info = json.loads((run_dir / "run.json").read_text())
    assert info["script"] == "iql.py" and info["total_steps"] == 300
    assert info["args"]["env_id"] == POINTMAZE and info["args"]["seed"] == 1 and info["args"]["expectile"] == 0.9


def test_runs_started_in_the_same_second_get_their_own_folders(minari_root, tmp_path):
    now = int(time.time())
    for t in range(now, now + 600):  # every name the default could take in the next ten minutes is taken
        (tmp_path / "runs" / f"D4RL-pointmaze-umaze-v2__iql__1__{t}").mkdir(parents=True)
    proc = run_script("iql.py", *SHORT[:-2], "--total-steps", 10, cwd=tmp_path)
    name = proc.stdout.split()[1].rstrip(";")  # the taken name with the process id appended
    assert re.fullmatch(r"D4RL-pointmaze-umaze-v2__iql__1__\d+_\d+", name)
    assert (tmp_path / "runs" / name / "run.json").exists()
    assert sum(1 for d in (tmp_path / "runs").iterdir() if any(d.iterdir())) == 1


def test_load_model_and_run_name_continue_a_fine_tuning(minari_root, tmp_path):
    """The same command, --load-model included, continues a fine-tuning run (its own networks, not iql.py's)."""
    run_script("iql.py", *SHORT[:-2], "--total-steps", 50, "--run-name", "pre", cwd=tmp_path)
    run_dir = tmp_path / "runs" / "ft"
    command = [sys.executable, str(ROOT / "iql_finetune.py"), "--load-model", "runs/pre/checkpoint_50.pt", "--run-name",
               "ft", "--batch-size", "64", "--eval-episodes", "2", "--checkpoint-interval", "50"]  # fmt: skip
    proc = subprocess.Popen(command + ["--online-steps", "1000000"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    wait_for(lambda: (run_dir / "checkpoint_50.pt").exists(), proc)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    step = int(re.search(r"interrupted by SIGUSR1 at step (\d+)", out)[1])
    assert proc.returncode == 138 and out.startswith("starting ft;") and "no offline phase" in out
    changed = subprocess.run(command + ["--online-steps", "100"], cwd=tmp_path, capture_output=True, text=True)
    assert changed.returncode == 2 and "--online-steps cannot change when a run continues" in changed.stderr

    proc = subprocess.Popen(command + ["--online-steps", "1000000"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith(f"continuing ft from step {step} (runs/ft/checkpoint_{step}.pt)")
    assert proc.stdout.readline().startswith(f"  buffer restored: 30000 offline + {step} online rows")
    wait_for(lambda: (run_dir / f"checkpoint_{step + 50 - step % 50}.pt").exists(), proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    later = int(re.search(r"interrupted by SIGINT at step (\d+)", out)[1])
    assert torch.load(run_dir / f"checkpoint_{later}.pt", weights_only=True)["online_added"] == later > step


# ---------------------------------------------------------------------------------------------- benchmark/results.py
def results(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "benchmark" / "results.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip


def fake_run(folder, script, seed, scores, total_steps=300, **settings):
    folder.mkdir(parents=True)
    args = dict(env_id=POINTMAZE, seed=seed, expectile=0.9, run_name=folder.name, eval_episodes=10) | settings
    (folder / "run.json").write_text(json.dumps(dict(script=script, total_steps=total_steps, args=args)))
    with open(folder / "evaluations.csv", "w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["step", "score", "success_rate", "mean_return"])
        table.writerows([100 * (i + 1), s, s / 100, s - 100] for i, s in enumerate(scores))


def test_results_table_by_hand_and_the_plot(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, scores in [(1, [10, 50, 70]), (2, [0, 20, 40]), (3, [30, 60, 100])]:
        fake_run(sweep / f"iql_s{seed}", "iql.py", seed, scores, eval_episodes=seed)  # run control: not a setting
        fake_run(sweep / f"iql_t_s{seed}", "iql.py", seed, [s / 2 for s in scores], expectile=0.7)
    fake_run(sweep / "iql_s4", "iql.py", 4, [90, 90])  # stopped at step 200 of 300
    fake_run(sweep / "idql_s1", "idql.py", 1, [5, 15, 25])
    fake_run(tmp_path / "hopper", "iql.py", 1, [1, 2, 3], env_id="mujoco/hopper/medium-v0")
    proc = results(sweep, tmp_path / "hopper", "--plot", tmp_path / "curves.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
            for line in proc.stdout.splitlines()[2:] if line.startswith("|")}  # fmt: skip
    # last scores 70, 40, 100: mean 70, std sqrt(((0)² + (30)² + (30)²) / 3) = 24.49; seed 4 is not averaged in
    assert rows["iql.py", POINTMAZE, "expectile=0.9"] == ["score 70.0 ± 24.5", "3", "300", "seed 4 at 200/300"]
    assert rows["iql.py", POINTMAZE, "expectile=0.7"] == ["score 35.0 ± 12.2", "3", "300", ""]
    assert rows["idql.py", POINTMAZE, ""] == ["score 25.0 ± 0.0", "1", "300", ""]
    assert rows["iql.py", "mujoco/hopper/medium-v0", ""] == ["score 3.0 ± 0.0", "1", "300", ""]
    assert len(rows) == 4
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    proc = results(tmp_path / "nothing-here", cwd=tmp_path)
    assert proc.returncode == 2 and "holds no run" in proc.stderr


# ---------------------------------------------------------------------------------------------- SLURM
def slurm_answers():
    if not shutil.which("sbatch"):
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0


def slurm(*args):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not slurm_answers(), reason="no SLURM answers (scontrol ping); start one: tests/start_slurm.sh")
def test_sweep_tasks_requeued_or_at_their_time_limit_continue_to_a_straight_runs_result(minari_root, tmp_path):
    """Two tiny iql.py tasks, each an array of its own. The first (limit 30 min) is requeued while it trains
    (SIGTERM, as preemption); the second (limit 1 min, warning 20 s before it: SLURM checks time limits every 30 s,
    so SIGUSR1 comes 10-40 s after the start, once the job script runs, and the limit itself 60-90 s after it)
    requeues itself and runs again with 30 min, as a user who raised the limit would. Both continue where they
    stopped and end bit for bit where straight runs end."""
    flags = ["--total-steps", 20_000, "--eval-interval", 10_000, "--eval-episodes", 2, "--checkpoint-interval", 2000,
             "--batch-size", 64, "--hidden-dim", 64, "--log-interval", 1000]  # fmt: skip
    env, jobs = {**os.environ, "PYTHON": sys.executable}, []
    for seed, limit in [(1, ["--time=30"]), (2, ["--time=1", "--signal=B:USR1@20"])]:
        sweep = tmp_path / f"sweep{seed}.txt"
        sweep.write_text(f"# script dataset seed flags\n\n{ROOT}/iql.py {POINTMAZE} {seed} {' '.join(map(str, flags))}\n")
        submitted = subprocess.run(["bash", ROOT / "benchmark" / "sweep.sbatch", sweep, *limit, "--cpus-per-task=1",
                                    "--mem=1G"], cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        jobs.append(re.search(r"Submitted batch job (\d+)", submitted.stdout)[1])
    names = [f"iql__D4RL-pointmaze-umaze-v2__{'_'.join(map(str, flags)).replace('--', '')}__s{seed}" for seed in (1, 2)]
    runs = tmp_path / "runs" / "sweep"
    try:
        deadline = time.time() + 400
        while not list((runs / names[0]).glob("checkpoint_*.pt")):
            assert time.time() < deadline
            time.sleep(0.2)
        slurm("scontrol", "requeue", f"{jobs[0]}_0")
        while queue := slurm("squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T %r").split("\n")[:-1]:
            assert time.time() < deadline, queue
            for task, state, reason in (line.split() for line in queue):
                if state == "PENDING" and reason == "BeginTime":  # a requeued task waits ~2 min: start it now,
                    slurm("scontrol", "update", f"JobId={task}", "StartTime=now", "TimeLimit=30")  # given time to end
            time.sleep(1)
    finally:
        subprocess.run(["scancel", *jobs])
    logs = [(runs / "slurm" / f"iql-sweep_{job}_0.out").read_text() for job in jobs]
    for job, log in zip(jobs, logs):
        record = slurm("scontrol", "show", "job", f"{job}_0")
        assert "JobState=COMPLETED" in record and "ExitCode=0:0" in record, record + log
    assert "restart 0," in logs[0] and "restart 1," in logs[0] and "interrupted by SIGTERM" in logs[0], logs[0]
    assert "restart 1," in logs[1] and "interrupted by SIGUSR1" in logs[1] and "exit status 138" in logs[1], logs[1]
    for log in logs:
        assert re.search(r"^continuing \S+ from step \d+ ", log, re.M) and log.rstrip().endswith("exit status 0")

    straight_runs = [start("iql.py", "--seed", seed, *flags, "--run-name", seed, cwd=tmp_path) for seed in (1, 2)]
    assert [proc.wait(timeout=300) for proc in straight_runs] == [0, 0]
    for seed, name in zip((1, 2), names):
        straight = tmp_path / "runs" / str(seed)
        assert (runs / name / "evaluations.csv").read_text() == (straight / "evaluations.csv").read_text()
        a, b = params(straight / "checkpoint_20000.pt"), params(runs / name / "checkpoint_20000.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    table = results(runs, cwd=tmp_path).stdout
    assert f"| iql.py | {POINTMAZE} | seed" not in table and "| 2 | 20000 |  |" in table, table
