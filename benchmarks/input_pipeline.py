"""Input pipeline throughput per family against what one H100 consumes at 40% MFU.

    python benchmarks/input_pipeline.py                    # bert_base, gpt2_small, vit_b16, ...
    python benchmarks/input_pipeline.py --quick            # tiny configs, seconds (the test)
    python benchmarks/input_pipeline.py --data_dir ~/.cache/fmjax/data --seconds 20

For each family the train loader the trainer uses (fmjax.data.pipeline on grain) runs with 0, 1
and 2 grain worker processes; the table gives this host's examples/s once the workers are up
(start-up is its own column); examples per CPU-second of the same batches computed in this
process (what one worker on a core of its own does, whatever else loads the machine); the
examples/s one H100 trains at 40% MFU (the task's train_flops_per_example and the H100 bf16 peak
of fmjax/train/metrics.py); the best measured rate over that; and the workers (a core each, at the
per-CPU-second rate) one H100 needs.

Families: bert_base MLM (seq 128) and gpt2_small causal LM (seq 1024) on their GCIDE corpus
(prepared on first use into --data_dir; --quick: bert_tiny / gpt_tiny on Shakespeare); vit_b16 from
JPEG files this benchmark writes (the emoji images of fonts-noto-color-emoji upscaled to 224 px,
decoded, Inception-cropped, resized and flipped per example, as for ImageNet); contrastive_tiny
on the emoji pairs.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

H100_KIND = "H100"  # the PEAK_FLOPS_BF16 entry the consumption column is computed against
TARGET_MFU = 0.40
TEXT_GOAL = 10.0  # the loader should feed >= 10x what one H100 consumes on text

# family -> (experiment, preset, overrides of config fields, batch size per host).
FAMILIES = {
    "bert_base": ("bert_base", None, {}, 256),
    "gpt2_small": ("gpt2_small", None, {}, 64),
    "vit_b16": ("vit_b16", None, {}, 128),
    "contrastive": ("contrastive_tiny", None, {}, 256),
}
QUICK_FAMILIES = {
    "bert_base": ("bert_tiny", None, {}, 32),
    "gpt2_small": ("gpt_tiny", "smoke", {}, 16),
    "vit_b16": ("vit_b16", None, {}, 8),
    "contrastive": ("contrastive_tiny", None, {}, 32),
}


def _experiment(name: str, preset: str | None, overrides: dict[str, Any], data_dir: str):
    from fmjax.experiments import experiment_config

    config = experiment_config(name, preset)
    config.data.data_dir = data_dir
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


def h100_examples_per_s(task: Any) -> float:
    """Examples/s one H100 trains at TARGET_MFU by the task's FLOP formula."""
    from fmjax.train.metrics import PEAK_FLOPS_BF16

    peak = dict(PEAK_FLOPS_BF16)[H100_KIND]
    return TARGET_MFU * peak / task.train_flops_per_example()


class JpegFiles:
    """A grain source of JPEG files: {"image": decoded uint8 [H, W, 3], "label"} on access."""

    def __init__(self, paths: list[str], labels: list[int]):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            pixels = np.asarray(image.convert("RGB"), np.uint8)
        return {"image": pixels, "label": self.labels[index]}


def write_jpegs(images: Any, folder: str, size: int, count: int) -> tuple[list[str], float]:
    """`count` emoji images upscaled to size x size as JPEG files; their paths, mean KiB."""
    from PIL import Image

    paths = []
    for index in range(count):
        pixels = np.asarray(images[index % len(images)]["image"], np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
        path = os.path.join(folder, f"{index:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    kib = float(np.mean([os.path.getsize(p) for p in paths])) / 1024
    return paths, kib


def vit_loader(config: Any, pair_config: Any, folder: str, batch_size: int, count: int):
    """The vit_b16 train loader over JPEG files built from the emoji images; and a note."""
    from fmjax.data.corpora import prepared_tfds_builder
    from fmjax.data.corpora.emoji import Emoji
    from fmjax.data.images import imagenet_example
    from fmjax.data.pipeline import make_loader

    data_dir = os.path.expanduser(str(pair_config.data.data_dir))
    builder = prepared_tfds_builder(Emoji, data_dir, "")
    size = int(config.data.image_size)
    paths, kib = write_jpegs(builder.as_data_source(split="train"), folder, size, count)
    labels = [index % int(config.model.num_classes) for index in range(count)]
    transform = functools.partial(imagenet_example, train=True, image_size=size)
    loader = make_loader(
        JpegFiles(paths, labels),
        transform,
        global_batch_size=batch_size,
        seed=0,
        process_index=0,
        process_count=1,
    )
    return loader, f"{count} JPEGs {size}x{size}, {kib:.0f} KiB each"


def examples_per_cpu_s(loader: Any, seconds: float) -> float:
    """Examples per CPU-second of computing batches in this process: a rate the other load
    on the machine hardly changes (it counts the CPU time spent, not the wall time waited)."""
    examples, start = 0, time.process_time()
    step = 0
    while step < 3 or time.process_time() - start < seconds:
        loader.batch(step)
        examples += loader.local_batch_size
        step += 1
    return examples / (time.process_time() - start)


def examples_per_s(loader: Any, workers: int, seconds: float) -> tuple[float, float]:
    """(steady examples/s, seconds to the first batch) of loader.iterate with `workers`."""
    loader.worker_count = workers
    start = time.perf_counter()
    iterator = loader.iterate(0)
    next(iterator)
    startup = time.perf_counter() - start
    for _ in range(loader.prefetch_buffer * max(1, workers)):  # drain what was read ahead
        next(iterator)
    batches, start = 0, time.perf_counter()
    while batches < 3 or time.perf_counter() - start < seconds:
        next(iterator)
        batches += 1
    elapsed = time.perf_counter() - start
    iterator.close()
    return batches * loader.local_batch_size / elapsed, startup


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the benchmark, prints the table, returns its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, short timings")
    parser.add_argument("--data_dir", default="~/.cache/fmjax/data")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per cell")
    args = parser.parse_args(argv)
    from fmjax.tasks import build_task

    families = QUICK_FAMILIES if args.quick else FAMILIES
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 10.0)
    worker_counts = [int(w) for w in args.workers.split(",")]
    data_dir = os.path.expanduser(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fmjax-jpegs-") as folder:
        for family in args.families.split(","):
            experiment, preset, overrides, batch_size = families[family]
            config = _experiment(experiment, preset, overrides, data_dir)
            config.train.batch_size = batch_size
            task = build_task(config)
            if family == "vit_b16":
                pairs = _experiment(*QUICK_FAMILIES["contrastive"][:3], data_dir)
                count = 64 if args.quick else 1024
                loader, note = vit_loader(config, pairs, folder, batch_size, count)
            else:
                loader = task.build_data().train
                note = experiment
            row = {"family": family, "data": note, "batch": batch_size}
            for workers in worker_counts:
                rate, startup = examples_per_s(loader, workers, seconds)
                row[f"workers_{workers}"] = rate
                row[f"startup_{workers}"] = startup
            row["cpu"] = examples_per_cpu_s(loader, seconds)
            row["h100"] = h100_examples_per_s(task)
            rows.append(row)
            print(f"# {family}: done", file=sys.stderr, flush=True)
    print_table(rows, worker_counts)
    return rows


def print_table(rows: list[dict], worker_counts: list[int]) -> None:
    """The markdown table of the rows."""
    rate_columns = [f"{w} workers ex/s" for w in worker_counts]
    header = ["family", "data", "batch", *rate_columns, "ex per CPU-s", "1 H100 @40% MFU ex/s"]
    header += ["best / H100", "workers per H100", "start-up s (per worker count)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        rates = [row[f"workers_{w}"] for w in worker_counts]
        best = max(rates)
        needed = math.ceil(row["h100"] / row["cpu"])
        cells = [row["family"], row["data"], str(row["batch"])]
        cells += [f"{rate:,.0f}" for rate in rates]
        cells += [f"{row['cpu']:,.0f}", f"{row['h100']:,.0f}", f"{best / row['h100']:.1f}x"]
        cells += [str(needed)]
        cells += [" / ".join(f"{row[f'startup_{w}']:.1f}" for w in worker_counts)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
