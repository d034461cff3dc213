"""--mode=prepare: prepare the configured data (tokenizer, packed shards) and exit.

Users prepare on a CPU machine before booking accelerators; the run's start then reads only the
prepared dataset's record. Nothing in the workdir is written.
"""

from __future__ import annotations

import json
import time
from typing import Any


def prepare(config: Any, workdir: str) -> dict:
    """Prepares config's data as training would and prints what was prepared; returns that."""
    del workdir  # preparation lives in data.data_dir, shared by every run of the data
    from fmjax.data.corpora import one_process_at_a_time
    from fmjax.tasks import build_task

    start = time.time()
    task = build_task(config)
    with one_process_at_a_time(str(config.data.get("data_dir", "."))):
        data = task.build_data()
    provenance = dict(getattr(data, "provenance", {}) or {})
    summary = {
        "seconds": round(time.time() - start, 1),
        **{
            k: provenance[k]
            for k in ("corpus", "num_train_sequences", "num_eval_sequences")
            if k in provenance
        },
        **({"prepared": provenance["prepared"]} if "prepared" in provenance else {}),
    }
    print(f"fmjax: prepared {json.dumps(summary)}")
    return summary
