"""Pretrained vs from-scratch fine-tuning at several label budgets: a table and a plot.

python -m fmjax.tools.transfer_curve --labels=250,1000,0 --seeds=0,1,2 --out=results/transfer
Each run fine-tunes `--experiment` (default bert_mini_cls; its preset "scratch" for the baseline)
on data.train_examples=N labeled examples (0: all) drawn with the run's seed, evaluates on the
validation split carved from train at every train.eval_every, and reports the test split on
the checkpoint with the best validation accuracy (the test split chooses nothing). Results go to
OUT/runs.jsonl (one line per run; a re-run skips the runs already there), OUT/transfer_curve.md
(mean ± std over seeds of test accuracy and macro-F1) and OUT/transfer_curve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

# The preset each line of the curve uses ("probe": a linear probe of the frozen pretrained
# encoder, for experiments that have that preset, e.g. vit_simclr_cls).
INITS = {"pretrained": "", "probe": "probe", "scratch": "scratch"}


def _typed(old, text: str):
    return type(old)(text) if not isinstance(old, bool) else text.lower() in ("1", "true")


def run_config(
    experiment: str, init: str, labels: int, seed: int, overrides: list[str], preset: str = ""
):
    """The fine-tuning config of one point of the curve; `preset` is added to the init's."""
    from fmjax.experiments import experiment_config

    config = experiment_config(experiment, ",".join(p for p in (INITS[init], preset) if p))
    config.seed = seed
    config.data.train_examples = labels
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[leaf] = _typed(section[leaf], value)
    return config


def best_validation_step(workdir: str) -> tuple[int, float]:
    """(step, accuracy) of the best validation eval in metrics.jsonl (the earliest on ties)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    best = max(evals, key=lambda r: (r["accuracy"], -r["step"]))
    return int(best["step"]), float(best["accuracy"])


def test_metrics(config, workdir: str, step: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the test split on checkpoint `step` of the run."""
    from fmjax.train.run import open_run

    config = config.copy_and_resolve_references()
    config.data.eval_split = "test"
    with open_run(config) as run:
        data = run.build_data()
        checkpoints = run.checkpointer(workdir)
        state, _ = checkpoints.restore(step, run.program.abstract_state)
        checkpoints.close()
        values = run.evaluate(state["params"], data)
    return {"test_accuracy": float(values["accuracy"]), "test_macro_f1": float(values["macro_f1"])}


def fine_tune(experiment, init, labels, seed, overrides, workdir_root, preset="") -> dict:
    """Trains one point of the curve and measures it; the record of runs.jsonl."""
    from fmjax.train import trainer

    config = run_config(experiment, init, labels, seed, overrides, preset)
    workdir = os.path.join(workdir_root, f"{init}-n{labels}-seed{seed}")
    shutil.rmtree(workdir, ignore_errors=True)  # a half-done run starts again
    start = time.perf_counter()
    trainer.train(config, workdir)
    step, validation_accuracy = best_validation_step(workdir)
    record = {
        "init": init,
        "labels": labels,
        "seed": seed,
        "best_step": step,
        "validation_accuracy": validation_accuracy,
        **test_metrics(config, workdir, step),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return record


def summarize(records: list[dict]) -> list[dict]:
    """Mean and std over seeds per (init, labels)."""
    rows = []
    for labels in sorted({r["labels"] for r in records}, key=lambda n: (n == 0, n)):
        for init in INITS:
            runs = [r for r in records if r["init"] == init and r["labels"] == labels]
            if not runs:
                continue
            acc = np.array([r["test_accuracy"] for r in runs]) * 100
            f1 = np.array([r["test_macro_f1"] for r in runs]) * 100
            rows.append(
                {
                    "labels": labels,
                    "init": init,
                    "seeds": len(runs),
                    "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std(ddof=1)) if len(runs) > 1 else 0.0,
                    "macro_f1_mean": float(f1.mean()),
                    "macro_f1_std": float(f1.std(ddof=1)) if len(runs) > 1 else 0.0,
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The summary as a markdown table (percent, mean ± sample std over seeds)."""
    lines = [
        "| labels | init | seeds | test accuracy (%) | test macro-F1 (%) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        spread = r["seeds"] > 1  # one seed has no spread to show

        def cell(name: str, r=r, spread=spread) -> str:
            mean = f"{r[f'{name}_mean']:.1f}"
            return f"{mean} ± {r[f'{name}_std']:.1f}" if spread else f"{mean} (one seed)"

        lines.append(
            f"| {r['labels'] or 'all'} | {r['init']} | {r['seeds']} | "
            f"{cell('accuracy')} | {cell('macro_f1')} |"
        )
    return "\n".join(lines) + "\n"


def plot(
    rows: list[dict],
    num_all: int,
    path: str,
    title: str = "Rotten Tomatoes: BERT-Mini fine-tuning",
    examples: str = "reviews",
) -> None:
    """Test accuracy against labels (log axis), one line per init, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for init in INITS:
        points = [r for r in rows if r["init"] == init]
        if not points:
            continue
        x = [r["labels"] or num_all for r in points]
        y = [r["accuracy_mean"] for r in points]
        err = [r["accuracy_std"] for r in points]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=init)
    ax.set_xscale("log")
    ax.set_xlabel(f"labeled training {examples}")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    """Runs the missing points of the curve, then writes the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="bert_mini_cls")
    parser.add_argument("--labels", default="250,1000,4000,0", help="label budgets; 0 = all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--inits", default="pretrained,scratch")
    parser.add_argument("--out", default="results/transfer_curve")
    parser.add_argument("--workdirs", default="runs/transfer_curve")
    parser.add_argument("--preset", default="", help="added to each run's preset, e.g. smoke")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "runs.jsonl")
    records = []
    if os.path.exists(results):
        with open(results) as f:
            records = [json.loads(line) for line in f if line.strip()]
    done = {(r["init"], r["labels"], r["seed"]) for r in records}
    labels = [int(n) for n in args.labels.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:  # seed-major: every label budget gets a first seed early
        for n in labels:
            for init in args.inits.split(","):
                if (init, n, seed) in done:
                    continue
                record = fine_tune(
                    args.experiment, init, n, seed, args.set, args.workdirs, args.preset
                )
                print(json.dumps(record), flush=True)
                records.append(record)
                with open(results, "a") as f:
                    f.write(json.dumps(record) + "\n")
    rows = summarize(records)
    with open(os.path.join(args.out, "transfer_curve.md"), "w") as f:
        f.write(markdown_table(rows))
    config = run_config(args.experiment, "scratch", 0, 0, args.set, args.preset)
    num_all = _num_all_labels(config)
    path = os.path.join(args.out, "transfer_curve.png")
    if config.task.name == "image_classification":
        plot(rows, num_all, path, f"Fashion-MNIST: {args.experiment}", "images")
    else:
        plot(rows, num_all, path)
    print(markdown_table(rows))


def _num_all_labels(config) -> int:
    """How many labeled train examples "all" is (train minus the validation carve)."""
    if config.task.name == "image_classification":
        from fmjax.data.images import build_image_data

        return int(build_image_data(config).provenance["splits"]["num_examples"]["train"])
    from fmjax.data.text_classification import labeled_data

    splits, _, _ = labeled_data(config)
    return len(splits["train"][-1]) - int(config.data.get("validation_examples", 0) or 0)


if __name__ == "__main__":
    main()
