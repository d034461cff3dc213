"""Train-step speed of bert_base and gpt2_small in bfloat16 against PyTorch peers, same run.

    python benchmarks/accelerator_step.py            # full shapes: a GPU (or TPU) machine
    python benchmarks/accelerator_step.py --small    # tiny shapes: checks it works on a CPU

For each model, fmjax's train step (AdamW, the trainer's jitted step on one device) is timed
for every attention backend that can run on this platform (xla everywhere, cudnn on GPU,
splash on TPU) and each remat policy worth trying, then the peers on the same shapes and
batch: HF transformers BertForMaskedLM (SDPA attention, bf16 autocast) and a nanoGPT-style
GPT-2 under torch.compile (bf16 autocast). One table: ms/step, tokens/s, model TFLOP/s
(fmjax/tasks formulas, the same for every row of a model), MFU (fmjax/train/metrics.py peak
table; n/a where the device has no entry) and tokens/s against the peer.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.step_timing import (  # noqa: E402
    fmjax_seconds_per_step,
    hf_bert_mlm_loss,
    measure,
    torch_train_step,
)

# (experiment file, seq_len, batch) at full size; --small shrinks the model and batch.
MODELS = {"bert_base": ("bert_base.py", 128, 256), "gpt2_small": ("gpt2_small.py", 1024, 16)}
SMALL_MODEL = dict(embed_dim=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
SMALL = dict(vocab_size=512, seq_len=128, batch_size=2)
# Remat policies worth timing: none (fastest when it fits) and MaxText's usual choice.
REMAT_POLICIES = ("none", "dots_with_no_batch_dims_saveable")


def model_config(name: str, small: bool):
    """The experiment's config at the benchmark's shapes, bfloat16 compute, dropout off."""
    from fmjax.experiments import experiment_config

    experiment, seq_len, batch_size = MODELS[name]
    config = experiment_config(experiment)
    if small:
        config.model.update(SMALL_MODEL, vocab_size=SMALL["vocab_size"])
        seq_len, batch_size = SMALL["seq_len"], SMALL["batch_size"]
    # Dropout off everywhere, peers included: the fused kernels cannot drop attention
    # probabilities (README, Accelerators), and equal work is what makes the ratios fair.
    config.model.update(compute_dtype="bfloat16", dropout_rate=0.0, attention_dropout_rate=0.0)
    config.data.seq_len = seq_len
    config.train.batch_size = batch_size
    config.mesh.update(data=1, fsdp=1, tensor=1)
    return config


def random_batch(task, batch_size: int, vocab_size: int, seed: int = 0) -> dict:
    """Random ids in the task's batch layout, every position real (speed ignores the text)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for name, spec in task.batch_spec(batch_size).items():
        shape = spec.shape
        if name in ("input_ids", "target_ids", "masked_ids"):
            batch[name] = rng.integers(5, vocab_size, size=shape, dtype=np.int32)
        elif name == "masked_positions":
            length = task.batch_spec(1)["input_ids"].shape[1]
            rows = [np.sort(rng.choice(length, shape[1], replace=False)) for _ in range(shape[0])]
            batch[name] = np.stack(rows).astype(np.int32)
        elif name == "positions":
            batch[name] = np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()
        elif name in ("attention_mask", "segment_ids"):
            batch[name] = np.ones(shape, np.int32)
        elif spec.dtype == np.float32:  # loss / masked weights
            batch[name] = np.ones(shape, np.float32)
        else:
            batch[name] = np.zeros(shape, spec.dtype)
    return batch


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hf_bert_seconds_per_step(config, batch, warmup: int, steps: int) -> float:
    """HF transformers BertForMaskedLM (SDPA attention, bf16 autocast) on the same batch."""
    device = torch_device()
    model, loss = hf_bert_mlm_loss(config, batch, device, attention="sdpa")
    step = torch_train_step(model, loss, device)
    return measure(step, warmup, steps, lambda loss: loss.item())


def nanogpt_seconds_per_step(config, batch, warmup: int, steps: int, compile: bool) -> float:
    """A nanoGPT-style GPT-2 (SDPA causal attention, tied head) under torch.compile."""
    import torch

    device = torch_device()
    torch.manual_seed(0)
    model = nanogpt(config.model).to(device).train()
    if compile:
        model = torch.compile(model)
    input_ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
    targets = torch.from_numpy(batch["target_ids"].astype(np.int64)).to(device)

    def loss():
        logits = model(input_ids)
        return torch.nn.functional.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), targets.view(-1)
        )

    step = torch_train_step(model, loss, device)
    return measure(step, warmup, steps, lambda loss: loss.item())


def nanogpt(model_config):
    """nanoGPT's model.py in brief: pre-LN blocks, fused c_attn, GELU (tanh), tied lm_head."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    d, heads, mlp = model_config.embed_dim, model_config.num_heads, model_config.mlp_dim

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.c_fc, self.mlp_proj = nn.Linear(d, mlp), nn.Linear(mlp, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (y.view(b, t, heads, d // heads).transpose(1, 2) for y in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(model_config.vocab_size, d)
            self.wpe = nn.Embedding(model_config.max_seq_len, d)
            self.blocks = nn.ModuleList(Block() for _ in range(model_config.num_layers))
            self.ln_f = nn.LayerNorm(d)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T

    return GPT()


def fmjax_variants(platform: str, config, remat_policies) -> list[tuple[str, str]]:
    """(attention backend, remat) pairs that can run on `platform`."""
    from fmjax.errors import ConfigError
    from fmjax.models.attention_backends import BACKENDS, check_attention_backend

    backends = []
    for backend in BACKENDS:
        if backend == "auto":
            continue
        try:
            model = dict(config.model.to_dict(), attention_backend=backend)
            check_attention_backend(model, platform, int(config.data.seq_len))
        except ConfigError:
            continue
        backends.append(backend)
    return [(backend, remat) for backend in backends for remat in remat_policies]


def run(args) -> list[dict]:
    """Measures every row; returns them as dicts (model, implementation, seconds, ...)."""
    import jax

    from fmjax.tasks import build_task
    from fmjax.train.metrics import peak_flops_per_device

    platform = jax.default_backend()
    peak = peak_flops_per_device(0.0)
    rows = []
    for name in args.models.split(","):
        config = model_config(name, args.small)
        task = build_task(config)
        batch = random_batch(task, config.train.batch_size, config.model.vocab_size)
        flops = task.train_flops_per_example() * config.train.batch_size
        tokens = task.tokens_per_example() * config.train.batch_size

        def row(implementation, attention, remat, seconds, name=name, flops=flops, tokens=tokens):
            rows.append(
                dict(
                    model=name,
                    implementation=implementation,
                    attention=attention,
                    remat=remat,
                    seconds=seconds,
                    tokens_per_s=tokens / seconds,
                    tflops=flops / seconds / 1e12,
                    mfu=None if peak is None else flops / seconds / peak,
                )
            )

        for backend, remat in fmjax_variants(platform, config, args.remat.split(",")):
            variant = config.copy_and_resolve_references()
            variant.model.update(attention_backend=backend, remat=remat)
            seconds = fmjax_seconds_per_step(variant, batch, args.warmup, args.steps)
            row("fmjax", backend, remat, seconds)
        if args.peers:
            if name == "bert_base":
                seconds = hf_bert_seconds_per_step(config, batch, args.warmup, args.steps)
                row("HF BertForMaskedLM (PyTorch)", "sdpa", "none", seconds)
            else:
                seconds = nanogpt_seconds_per_step(
                    config, batch, args.warmup, args.steps, args.torch_compile
                )
                label = "nanoGPT (torch.compile)" if args.torch_compile else "nanoGPT (eager)"
                row(label, "sdpa", "none", seconds)
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table; `vs peer` is tokens/s over the same model's PyTorch row."""
    columns = "model implementation attention remat ms/step tokens/s TFLOP/s MFU".split()
    columns.append("vs peer")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        peer = next(
            (p for p in rows if p["model"] == r["model"] and p["implementation"] != "fmjax"), None
        )
        ratio = "n/a" if peer is None else f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x"
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['model']} | {r['implementation']} | {r['attention']} | {r['remat']} "
            f"| {1e3 * r['seconds']:,.1f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} "
            f"| {mfu} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    parser.add_argument("--models", default="bert_base,gpt2_small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--remat", default=",".join(REMAT_POLICIES), help="policies to time")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--torch_compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the nanoGPT peer (off: eager, for quick checks)",
    )
    args = parser.parse_args(argv)

    import jax

    rows = run(args)
    device = jax.devices()[0]
    print(
        f"\ntrain step, bfloat16 compute, dropout off; {device.platform} {device.device_kind}; "
        f"median of {args.steps} steps{' (--small shapes)' if args.small else ''}\n"
    )
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
