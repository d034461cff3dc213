"""The text preparation of fmjax/data/preparation.py as an Apache Beam pipeline (optional extra).

`data.beam_pipeline_options="--runner=..."` runs every unfinished unit as one Beam element with
the same `prepare_unit` as the local path, so a Beam run writes the very same shards (same
sha256); the tokenizer is trained first on the launching machine (a bounded sample) and the
dataset's record is written there last. Workers write the shards straight into the dataset's
folder, so on Dataflow, Flink or Spark `data.data_dir` must be a file system every worker
mounts (e.g. a Filestore/NFS or a GCS FUSE mount): ArrayRecord writes POSIX files.
"""

from __future__ import annotations

import shlex
from typing import Any

from fmjax.errors import ConfigError


def run_units_with_beam(plan: Any, pipeline_options: str) -> list[dict]:
    """Prepares the plan's unfinished units in a Beam pipeline; returns every unit's result."""
    from fmjax.data import preparation

    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ConfigError(
            "data.beam_pipeline_options is set but Apache Beam is not installed; "
            "pip install 'fmjax[beam]' (or clear the option to prepare with local processes)"
        ) from e
    pending = [u for u in plan.units if preparation.finished_unit(plan, u) is None]
    if pending:
        options = PipelineOptions(shlex.split(pipeline_options))
        with beam.Pipeline(options=options) as pipeline:
            _ = (
                pipeline
                | "Units" >> beam.Create(pending)
                | "Spread" >> beam.Reshuffle()
                | "Prepare" >> beam.Map(lambda unit: preparation.prepare_unit(plan, unit))
            )
    results = [preparation.finished_unit(plan, u) for u in plan.units]
    missing = [u.index for u, r in zip(plan.units, results, strict=True) if r is None]
    if missing:
        raise ConfigError(
            f"the Beam workers' shards of units {missing[:5]} are not in {plan.directory}; "
            "data.data_dir must be a file system every Beam worker mounts"
        )
    return results
