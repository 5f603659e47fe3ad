"""Every bad input to the three training scripts stops with one line that names the flag or file (exit status 2, no
traceback), and leaves every file of the run it concerns as it was; a disk that fills while a checkpoint is written
(a file-size limit stands in for it) keeps every earlier file and leaves no partial one."""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_script

POINTMAZE = "D4RL/pointmaze/umaze-v2"
TINY = {
    "iql.py": ["--total-steps", 20, "--batch-size", 32, "--hidden-dim", 32],
    "idql.py": ["--critic-steps", 20, "--actor-steps", 20, "--critic-batch-size", 32, "--actor-batch-size", 32,
                "--hidden-dim", 32, "--actor-hidden-dim", 32, "--actor-num-blocks", 1, "--num-samples", 4],
    "iql_finetune.py": ["--offline-steps", 10, "--online-steps", 10, "--batch-size", 32, "--hidden-dim", 32],
}  # fmt: skip
COMMON = ["--env-id", POINTMAZE, "--eval-interval", 10, "--eval-episodes", 1, "--checkpoint-interval", 10]


@pytest.fixture(scope="module")
def runs(minari_root, tmp_path_factory):
    """A finished tiny run of each script in runs/<script>, with checkpoints at steps 10 and 20, a copy of each
    step-10 checkpoint a key short (incomplete_<script>.pt), and a file where a folder should be."""
    cwd = tmp_path_factory.mktemp("bad_inputs")
    for script, flags in TINY.items():
        run_script(script, *COMMON, *flags, "--run-name", script, cwd=cwd)
        state = torch.load(cwd / "runs" / script / "checkpoint_10.pt", weights_only=True)
        del state["qf_optimizer"]  # the right format, a key short
        torch.save(state, cwd / f"incomplete_{script}.pt")
    (cwd / "a_file").write_text("not a folder")
    return cwd


@pytest.fixture(scope="module")
def corrupt_root(minari_root, tmp_path_factory):
    """A MINARI_DATASETS_PATH whose PointMaze data file is cut short, as an interrupted copy leaves it."""
    root = tmp_path_factory.mktemp("corrupt") / "datasets"
    shutil.copytree(minari_root / "D4RL" / "pointmaze", root / "D4RL" / "pointmaze")
    data = root / "D4RL" / "pointmaze" / "umaze-v2" / "data" / "main_data.hdf5"
    data.write_bytes(data.read_bytes()[:500_000])
    return root


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A folder nobody may write to: chmod for a user, a read-only mount for root (who ignores permissions);
    None where root cannot mount one."""
    folder = tmp_path_factory.mktemp("read_only")
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", folder], capture_output=True).returncode:
        folder = None
    yield folder
    if folder and os.geteuid() == 0:
        subprocess.run(["umount", folder])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cases(script, cwd):
    ckpt, incomplete = cwd / "runs" / script / "checkpoint_10.pt", cwd / f"incomplete_{script}.pt"
    found = [
        (["--seed", -1], "--seed must be in [0, 2**32), got -1"),
        (["--seed", 10**20], "--seed must be in [0, 2**32)"),
        (["--env-id", ""], "--env-id is empty"),
        (["--env-id", POINTMAZE, "--runs-dir", "a_file"], "a_file is not a writable folder; give another --runs-dir"),
        (["--env-id", POINTMAZE, "--runs-dir", "a_file/runs"], "a_file is not a writable folder"),
        (["--resume", incomplete], f"'{incomplete}' is an incomplete checkpoint (it has no qf_optimizer)"),
        (["--env-id", POINTMAZE, "__corrupt__"], "main_data.hdf5 is corrupt"),
        (["--env-id", POINTMAZE, "__read_only__"], "is not a writable folder; give another --runs-dir"),
    ]
    if script != "iql_finetune.py":
        found += [(["--resume", ckpt, "--eval-only", ckpt], "--eval-only evaluates a checkpoint and starts no run")]
    if script == "iql.py":
        found += [(["--eval-only", ckpt, "--hidden-dim", 64], "--hidden-dim cannot change with --eval-only")]
    if script == "idql.py":
        found += [
            (["--eval-only", ckpt, "--actor-hidden-dim", 64], "--actor-hidden-dim cannot change with --eval-only"),
            (["--resume", ckpt, "--critic-loss", "quantile"], "--critic-loss cannot change when a run continues"),
            (["--env-id", POINTMAZE, "--exp-clip", "inf"], "--exp-clip must be > 0 and finite, got inf"),
            (["--env-id", POINTMAZE, "--critic-lr", "inf"], "--critic-lr must be > 0 and finite, got inf"),
        ]
    else:
        found += [
            (["--env-id", POINTMAZE, "--temperature", "inf"], "--temperature must be > 0 and finite, got inf"),
            (["--env-id", POINTMAZE, "--exp-adv-max", "inf"], "--exp-adv-max must be > 0 and finite, got inf"),
        ]
    if script == "iql_finetune.py":
        found += [
            (["--load-model", cwd / "incomplete_iql.py.pt"], "is an incomplete checkpoint (it has no qf_optimizer)"),
            (["--env-id", POINTMAZE, "--online-steps", 10**10, "--buffer-size", 10**10],
             "the replay buffer needs 447.0 GiB (10000000000 rows) but the cpu has"),
        ]  # fmt: skip
    return found


@pytest.mark.parametrize("script", ["iql.py", "idql.py", "iql_finetune.py"])
def test_each_bad_input_gets_one_line_and_changes_no_file(runs, corrupt_root, read_only, script):
    before = snapshot(runs)
    for args, expected in cases(script, runs):
        env = {}
        if "__corrupt__" in args:
            args, env = args[:-1], {"MINARI_DATASETS_PATH": str(corrupt_root)}
        if "__read_only__" in args and not read_only:
            print("skipped: the read-only --runs-dir (root cannot mount a read-only tmpfs here)")
            continue
        if "__read_only__" in args:
            args = [*args[:-1], "--runs-dir", read_only / "runs"]
        proc = run_script(script, *args, cwd=runs, check=False, env=env)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr[-3000:])
        assert errors == [proc.stderr.strip().splitlines()[-1]] and errors[0].startswith(f"{script}: error: "), errors
        assert expected in errors[0], (args, errors[0])
        assert snapshot(runs) == before, args  # no file changed, none was made


def no_bigger_files(limit):
    def apply():  # as a full disk: writing past `limit` bytes fails (SIGXFSZ ignored, so write() returns EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("script", ["iql.py", "idql.py", "iql_finetune.py"])
def test_a_full_disk_while_checkpointing_keeps_the_earlier_files(minari_root, tmp_path, script):
    long = {"iql.py": ["--total-steps", 10**6], "idql.py": ["--critic-steps", 10**6, "--actor-steps", 10**6],
            "iql_finetune.py": ["--offline-steps", 10, "--online-steps", 10**6]}[script]  # fmt: skip
    flags = [*COMMON[:2], "--eval-interval", 10**6, "--eval-episodes", 1, "--checkpoint-interval", 20, "--run-name", "r"]
    cmd = [sys.executable, str(ROOT / script), *map(str, TINY[script] + long + flags)]
    run_dir = tmp_path / "runs" / "r"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "checkpoint_20.pt").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    step = re.search(r"interrupted by SIGTERM at step (\d+)", out)[1]
    last = run_dir / f"checkpoint_{step}.pt"
    before = snapshot(run_dir)
    limit = min(len(v) for k, v in before.items() if k.suffix == ".pt") // 2  # no checkpoint fits any more
    assert limit > max(len(v) for k, v in before.items() if k.suffix != ".pt")  # the other files still do

    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, preexec_fn=no_bigger_files(limit))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"{script}: error: cannot write \S+/checkpoint_\d+\.pt \(a full disk\? .*\); the last good "
                        rf"checkpoint is {re.escape(str(last.relative_to(tmp_path)))}", message), message  # fmt: skip
    after = snapshot(run_dir)
    assert {k: after[k] for k in before} == before  # every earlier file as it was
    assert not [k for k in after if k.suffix == ".tmp"] and [k for k in after if k.suffix == ".pt"] == list(
        k for k in before if k.suffix == ".pt")  # fmt: skip
