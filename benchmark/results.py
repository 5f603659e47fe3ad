"""The table and the learning curves of a sweep, from its run folders alone.

    python benchmark/results.py runs/sweep [MORE_RUN_FOLDERS ...] [--plot curves.png]

Each argument is a run folder (one with the run.json that iql.py, idql.py and iql_finetune.py write) or a folder
of them. Runs are grouped by script, dataset and the settings that tell the runs of one script and dataset apart,
other than the seed. Per group: the mean ± standard deviation over seeds (numpy's std, ddof 0) of the last
evaluation's score (its mean return where the dataset has no score), as the papers report, the number of seeds and
the step. A run whose last evaluation is short of its last step (stopped early, or still running) is listed as such
and not averaged in. --plot draws the curves: one panel per dataset, one line per group (the mean over its finished
runs, with a ± std band; unfinished runs as thin lines).
"""

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# not what a run computes: where it ran, how it was watched, how it was started
IGNORED = {"seed", "run_name", "runs_dir", "resume", "eval_only", "load_model", "cuda", "compile", "eval_interval"}
IGNORED |= {"eval_episodes", "log_interval", "save_model", "checkpoint_interval", "save_buffer"}


def fail(message):
    print(f"results.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_run(folder):
    try:
        info = json.loads((folder / "run.json").read_text())
        path = folder / "evaluations.csv"
        rows = list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []
    except (OSError, ValueError) as e:
        fail(f"cannot read the run in {folder} ({type(e).__name__}: {e})")
    key = "score" if rows and rows[-1].get("score") else "mean_return"
    curve = [(int(row["step"]), float(row[key])) for row in rows]
    finished = bool(curve) and curve[-1][0] == info["total_steps"]
    return dict(info, folder=folder, key=key, curve=curve, finished=finished)


def find_runs(paths):
    folders = []
    for path in map(Path, paths):
        found = [path] if (path / "run.json").exists() else sorted(p.parent for p in path.glob("*/run.json"))
        if not found:
            fail(f"{path} holds no run (no run.json in it or in the folders in it)")
        folders += found
    return [read_run(folder) for folder in folders]


def group_runs(runs):
    """{(script, dataset, settings label): runs}; the label names the settings in which runs of one script and
    dataset differ."""
    by_task = defaultdict(list)
    for run in runs:
        by_task[run["script"], run["args"]["env_id"]].append(run)
    groups = {}
    for (script, dataset), task_runs in sorted(by_task.items()):
        settings = [{k: v for k, v in run["args"].items() if k not in IGNORED} for run in task_runs]
        differ = sorted(k for k in settings[0] if len({json.dumps(s.get(k)) for s in settings}) > 1)
        for run, s in zip(task_runs, settings):
            label = " ".join(f"{k}={s[k]}" for k in differ)
            groups.setdefault((script, dataset, label), []).append(run)
    return groups


def table(groups):
    lines = ["| script | dataset | settings | last evaluation (mean ± std) | seeds | step | not finished |"]
    lines.append("|---|---|---|---|---|---|---|")
    for (script, dataset, label), runs in groups.items():
        done = [run for run in runs if run["finished"]]
        last = np.array([run["curve"][-1][1] for run in done])
        result = f"{done[0]['key'].replace('_', ' ')} {last.mean():.1f} ± {last.std():.1f}" if done else "–"
        step = ", ".join(sorted({str(run["curve"][-1][0]) for run in done})) or "–"
        stopped = [
            f"seed {run['args']['seed']} at {run['curve'][-1][0] if run['curve'] else 0}/{run['total_steps']}"
            for run in runs
            if not run["finished"]
        ]
        lines.append(f"| {script} | {dataset} | {label} | {result} | {len(done)} | {step} | {', '.join(stopped)} |")
    return "\n".join(lines)


def plot(groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({dataset for _, dataset, _ in groups})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for i, ((script, _, label), runs) in enumerate((k, v) for k, v in groups.items() if k[1] == dataset):
            color, done = f"C{i}", [run for run in runs if run["finished"]]
            if done:
                steps = sorted(set.intersection(*(set(s for s, _ in run["curve"]) for run in done)))
                values = np.array([[dict(run["curve"])[s] for s in steps] for run in done])
                mean, std = values.mean(0), values.std(0)
                ax.plot(steps, mean, color=color, label=" ".join(filter(None, [script, label, f"({len(done)} seeds)"])))
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
            for run in runs:
                if not run["finished"] and run["curve"]:
                    ax.plot(*zip(*run["curve"]), color=color, lw=0.8, ls="--", alpha=0.6)
        keys = {run["key"] for (_, d, _), runs in groups.items() if d == dataset for run in runs}
        ax.set(title=dataset, xlabel="step", ylabel=" or ".join(sorted(keys)).replace("_", " "))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, or folders of run folders")
    parser.add_argument("--plot", metavar="FILE", help="draw the learning curves into FILE (.png, .pdf, .svg)")
    cli = parser.parse_args()
    groups = group_runs(find_runs(cli.runs))
    print(table(groups))
    if cli.plot:
        plot(groups, cli.plot)
        print(f"learning curves: {cli.plot}")
