"""Metrics out: metrics.jsonl, TensorBoard event files (no TensorFlow), throughput and MFU."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from etils import epath

from fmjax.train.storage import is_object_store, workdir_path, write_text

# An object store has no append: metrics.jsonl is rewritten whole at most this often.
OBJECT_STORE_FLUSH_SECONDS = 30.0

# Dense bfloat16 peak FLOP/s per device (chip), from the vendors' data sheets. MFU is
# measured against these whatever the compute dtype, so float32 runs report a conservative
# MFU. Matched by substring of `jax.Device.device_kind`, first match wins.
PEAK_FLOPS_BF16 = (
    ("H200", 989e12),  # NVIDIA H200 SXM, dense (1979 with sparsity)
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # NVIDIA H100 SXM
    ("A100", 312e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("TPU v6", 918e12),  # Trillium / v6e
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)


def peak_flops_per_device(configured: float, device: jax.Device | None = None) -> float | None:
    """The configured peak if > 0, else the table's entry for the device, else None (n/a)."""
    if configured > 0:
        return float(configured)
    device = device or jax.devices()[0]
    for name, peak in PEAK_FLOPS_BF16:
        if name.lower() in device.device_kind.lower():
            return peak
    return None


def model_flops_utilization(
    flops_per_step: float, seconds_per_step: float, num_devices: int, peak_per_device: float | None
) -> float | None:
    """Achieved model FLOP/s over the devices' peak (None when the peak is unknown)."""
    if not peak_per_device or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / (num_devices * peak_per_device)


class MetricsWriter:
    """Appends metrics to workdir/metrics.jsonl and TensorBoard; only process 0 writes.

    An object store (gs://) has no append: there the file is rewritten whole, at most every
    OBJECT_STORE_FLUSH_SECONDS and at close, so a run killed with -9 loses the records of its
    last seconds (a resume drops those logged after its checkpoint anyway).
    """

    def __init__(self, workdir: str, resume_step: int | None = None):
        """`resume_step`: a training run's start; records after it are dropped (None: keep all)."""
        self.enabled = jax.process_index() == 0
        workdir = workdir_path(workdir)
        self.path = workdir / "metrics.jsonl"
        self._tensorboard = None
        self._rewrite_whole = is_object_store(workdir)
        self._lines: list[str] = []
        self._flushed_at = time.monotonic()
        if not self.enabled:
            return
        if resume_step is not None:
            drop_lines_after(self.path, resume_step)
        if self._rewrite_whole and self.path.exists():
            self._lines = [line for line in self.path.read_text().splitlines(True) if line.strip()]
        from tensorboardX import SummaryWriter

        # purge_step drops events a killed run logged after the checkpoint we resume from.
        self._tensorboard = SummaryWriter(
            os.fspath(workdir / "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
        )

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        """Logs one record {"step", "split", **values}; None values are kept as null."""
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({key: _plain(value) for key, value in values.items()})
        line = json.dumps(record) + "\n"
        if self._rewrite_whole:
            self._lines.append(line)
            if time.monotonic() - self._flushed_at >= OBJECT_STORE_FLUSH_SECONDS:
                self.flush()
        else:
            with self.path.open("a") as f:
                f.write(line)
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(f"{split}/{key}", value, step)

    def flush(self) -> None:
        """Puts every record so far into metrics.jsonl (object stores; a no-op on disk)."""
        if self.enabled and self._rewrite_whole:
            write_text(self.path, "".join(self._lines))
            self._flushed_at = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._tensorboard is not None:
            self._tensorboard.close()


def drop_lines_after(path: str | os.PathLike, step: int) -> None:
    """Removes records logged after `step` (by a run that died before its next checkpoint)."""
    path = epath.Path(path)
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines(True) if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        write_text(path, "".join(kept))


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value)
