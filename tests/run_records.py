"""Reading what a training run wrote to its workdir, for the end-to-end tests."""

import json
import os


def metric_records(workdir, split: str | None = None) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl in order; with `split` ("train", "eval") only its."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if split is None or r["split"] == split]
