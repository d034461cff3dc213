"""BERT MLM training speed: fmjax vs HF transformers (PyTorch) on the same config, same run.

    python benchmarks/bert_speed.py                       # experiments/bert_tiny.py sizes
    python benchmarks/bert_speed.py --preset smoke --steps 5

Prints a table: train tokens/s for fmjax and (when torch + transformers are installed) HF
`BertForMaskedLM` + AdamW, their ratio, fmjax's achieved model FLOP/s (formula in
fmjax/tasks/mlm.py) and the measured float32 matmul ceiling of this machine. Tokens are
random ids in the MLM batch layout: speed does not depend on the text.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from benchmarks.step_timing import (  # noqa: E402
    fmjax_seconds_per_step,
    hf_bert_mlm_loss,
    measure,
    torch_train_step,
)


def matmul_flops_per_s(m: int, k: int, n: int, repeats: int = 10) -> float:
    """Median float32 FLOP/s of a jitted [m, k] @ [k, n] matmul on the default device."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = measure(lambda: matmul(a, b), 2, repeats, lambda out: out.block_until_ready())
    return 2 * m * k * n / seconds


def torch_seconds_per_step(config, batch, warmup: int, steps: int) -> float | None:
    """HF BertForMaskedLM + AdamW (PyTorch eager, float32) on the same batch; None without torch."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    model, loss = hf_bert_mlm_loss(config, batch)
    step = torch_train_step(model, loss, "cpu", bfloat16=False)
    return measure(step, warmup, steps, lambda loss: loss.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="bert_tiny preset (e.g. smoke)")
    parser.add_argument("--batch_size", type=int, default=32, help="global batch (issue: 32)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    from test_parallel import random_mlm_batch

    from fmjax.config import resolve_auto_fields
    from fmjax.experiments import experiment_config

    config = experiment_config("bert_tiny", args.preset)
    resolve_auto_fields(config, "cpu")
    config.train.batch_size = args.batch_size

    import jax

    from fmjax.tasks import build_task

    task = build_task(config)
    batch = random_mlm_batch(task, config.train.batch_size, config.model.vocab_size)
    tokens = config.train.batch_size * config.data.seq_len
    flops = task.train_flops_per_example() * config.train.batch_size

    ceiling = matmul_flops_per_s(2048, 2048, 2048)
    tokens_in_batch = config.train.batch_size * config.data.seq_len
    model_shape = matmul_flops_per_s(tokens_in_batch, config.model.embed_dim, config.model.mlp_dim)
    fmjax_s = fmjax_seconds_per_step(config, batch, args.warmup, args.steps)
    torch_s = torch_seconds_per_step(config, batch, args.warmup, args.steps)

    m = config.model
    print(
        f"\nBERT MLM train step: {m.num_layers} layers, hidden {m.embed_dim}, {m.num_heads} heads,"
        f" mlp {m.mlp_dim}, vocab {m.vocab_size}, seq {config.data.seq_len}, "
        f"batch {config.train.batch_size}; device {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} cores; median of {args.steps} steps\n"
    )
    rows = [("fmjax (JAX/Flax NNX, jit)", fmjax_s)]
    if torch_s is not None:
        rows.append(("HF transformers BertForMaskedLM (PyTorch eager)", torch_s))
    print(f"{'implementation':<50} {'ms/step':>9} {'tokens/s':>10} {'vs PyTorch':>10}")
    for name, seconds in rows:
        ratio = f"{torch_s / seconds:.2f}x" if torch_s else "n/a"
        print(f"{name:<50} {seconds * 1e3:>9.1f} {tokens / seconds:>10,.0f} {ratio:>10}")
    if torch_s is None:
        print("(PyTorch peer skipped: pip install torch==2.13.0 transformers)")
    achieved = flops / fmjax_s
    print(f"\nfmjax model FLOP/s (fmjax/tasks/mlm.py formula): {achieved / 1e9:,.1f} GFLOP/s")
    print(f"measured float32 matmul ceiling (2048^3 jit):   {ceiling / 1e9:,.1f} GFLOP/s")
    shape = f"{tokens_in_batch}x{config.model.embed_dim}x{config.model.mlp_dim}"
    print(f"same, at the MLP's shape ({shape}):  {model_shape / 1e9:,.1f} GFLOP/s")
    print(f"fmjax step / matmul ceiling:                     {achieved / ceiling:.0%}")
    print(f"fmjax step / MLP-shape matmul:                   {achieved / model_shape:.0%}")


if __name__ == "__main__":
    main()
