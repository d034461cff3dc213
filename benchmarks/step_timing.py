"""What the train-step benchmarks share: a median timer, fmjax's compiled train step on one
device (through the run context, as the trainer builds it) and the HF BertForMaskedLM peer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def measure(step: Callable[[], Any], warmup: int, steps: int, sync: Callable[[Any], Any]) -> float:
    """Median seconds per step over `steps` timed steps after `warmup` untimed ones."""
    for _ in range(warmup):
        sync(step())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fmjax_seconds_per_step(config, batch: dict, warmup: int, steps: int) -> float:
    """fmjax's jitted train step (the trainer's program, AOT-compiled) on one device."""
    import jax

    from fmjax.parallel.sharding import shard_batch
    from fmjax.train.run import open_run

    config = config.copy_and_resolve_references()
    config.mesh.update(data=1, fsdp=1, tensor=1)
    with open_run(config, jax.devices()[:1]) as run:
        train_step = run.compile_train_step()
        holder = {"state": run.program.init_state()}
        device_batch = shard_batch(batch, run.mesh)

        def step():
            holder["state"], metrics = train_step(holder["state"], device_batch)
            return metrics

        return measure(step, warmup, steps, jax.block_until_ready)


def hf_bert_mlm_loss(config, batch: dict, device: str = "cpu", attention: str | None = None):
    """HF BertForMaskedLM with the run's model fields (export_hf's BertConfig) in train mode,
    and a function of no arguments returning its MLM loss on `batch` (labels at the real masked
    positions, -100 elsewhere)."""
    import torch
    from transformers import BertForMaskedLM

    from fmjax.tools.export_hf import hf_config

    torch.manual_seed(0)
    bert_config = hf_config(config.model, int(config.model.vocab_size))
    if attention is not None:
        bert_config._attn_implementation = attention  # the config's own setter (e.g. "sdpa")
    model = BertForMaskedLM(bert_config).to(device).train()
    input_ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
    attention_mask = torch.from_numpy(batch["attention_mask"].astype(np.int64)).to(device)
    labels = torch.full_like(input_ids, -100)
    rows = np.repeat(np.arange(input_ids.shape[0])[:, None], batch["masked_ids"].shape[1], 1)
    real = batch["masked_weights"] > 0
    labels[rows[real], batch["masked_positions"][real]] = torch.from_numpy(
        batch["masked_ids"][real].astype(np.int64)
    ).to(device)

    def loss():
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    return model, loss


def torch_train_step(model, batch_to_loss: Callable[[], Any], device: str, bfloat16: bool = True):
    """One AdamW step of a PyTorch model (under bf16 autocast unless `bfloat16` is False),
    returning the loss."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
        with autocast if bfloat16 else contextlib.nullcontext():
            loss = batch_to_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    return step
