"""Per-device memory and FLOPs of bert_base and gpt2_small across meshes and memory knobs.

    python benchmarks/memory_scaling.py                      # both models, every row (slow)
    python benchmarks/memory_scaling.py --models gpt2_small --rows fsdp8,fsdp8_scan

Each row AOT-compiles the train step with fmjax's `--mode=compile` machinery
(fmjax.train.trainer.compile_report) on 8 simulated devices: nothing is allocated or run. The
table has XLA's per-device argument (params + optimizer state + batch), temp and output bytes,
FLOPs per step, and the params + optimizer bytes per device against total / N with
N = fsdp x tensor (the ways the rules split the weights; `data` holds copies). The goal is a
row within 10% of total / N.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    os.environ["XLA_FLAGS"] = flags.strip()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (mesh data x fsdp x tensor, model overrides, train overrides). Each row answers one
# question: how fsdp and tensor split the state, and what remat / scan / accumulation save.
ROWS = {
    "data8": ((8, 1, 1), {}, {}),
    "fsdp2": ((4, 2, 1), {}, {}),
    "fsdp4": ((2, 4, 1), {}, {}),
    "fsdp8": ((1, 8, 1), {}, {}),
    "fsdp4_tensor2": ((1, 4, 2), {}, {}),
    "fsdp2_tensor4": ((1, 2, 4), {}, {}),
    "fsdp8_remat_dots": ((1, 8, 1), {"remat": "dots_saveable"}, {}),
    "fsdp8_remat_full": ((1, 8, 1), {"remat": "full"}, {}),
    "fsdp8_scan": ((1, 8, 1), {"scan_layers": True}, {}),
    "fsdp8_scan_remat_dots": ((1, 8, 1), {"scan_layers": True, "remat": "dots_saveable"}, {}),
    "fsdp8_scan_remat_full": ((1, 8, 1), {"scan_layers": True, "remat": "full"}, {}),
    "fsdp8_accum4": ((1, 8, 1), {}, {"grad_accum_steps": 4}),
    "fsdp8_bf16": ((1, 8, 1), {"compute_dtype": "bfloat16"}, {}),
    "fsdp8_scan_remat_full_accum4": (
        (1, 8, 1),
        {"scan_layers": True, "remat": "full"},
        {"grad_accum_steps": 4},
    ),
}
# Vocabularies padded to a multiple of 64 so that tensor=4 divides them (as nanoGPT does).
PADDED_VOCAB = {"bert_base": 30528, "gpt2_small": 50304}


def experiment_config(name: str, row: str, batch_size: int):
    """The experiment's config with the row's mesh and knobs."""
    from fmjax import experiments

    config = experiments.experiment_config(name)
    (data, fsdp, tensor), model_fields, train_fields = ROWS[row]
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    config.model.update(vocab_size=PADDED_VOCAB[name], **model_fields)
    config.train.update(train_fields)
    if batch_size:
        config.train.batch_size = batch_size
    return config


def state_bytes(config) -> tuple[int, int]:
    """(params + optimizer bytes in total, per device) from the shardings the rules give."""
    import jax

    from fmjax.parallel.mesh import make_mesh
    from fmjax.parallel.sharding import bytes_per_device, sharding_context
    from fmjax.tasks import build_task
    from fmjax.train.step import build_program

    mesh = make_mesh(config.mesh)
    with sharding_context(config, mesh):
        program = build_program(config, build_task(config), mesh)
    state = {k: program.abstract_state[k] for k in ("params", "opt_state")}
    shardings = {k: program.state_shardings[k] for k in ("params", "opt_state")}
    total = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    return total, bytes_per_device(state, shardings)


def measure(name: str, row: str, batch_size: int) -> dict:
    """One table row: compile_report's figures plus the state's split."""
    from fmjax.train import trainer

    config = experiment_config(name, row, batch_size)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        report = trainer.compile_report(config, workdir)  # also resolves "auto" fields
    total, per_device = state_bytes(config)
    (_, fsdp, tensor), _, _ = ROWS[row]
    return {
        "model": name,
        "row": row,
        "config": config,
        "report": report,
        "state_total": total,
        "state_per_device": per_device,
        "ideal": total / (fsdp * tensor),
    }


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def format_row(result: dict) -> str:
    config, report = result["config"], result["report"]
    mesh = report["mesh"]
    per_device = report["per_device"]
    cells = [
        result["model"],
        f"{mesh['data']}x{mesh['fsdp']}x{mesh['tensor']}",
        config.model.get("remat", "none"),
        "on" if config.model.get("scan_layers") else "off",
        str(config.train.get("grad_accum_steps", 1)),
        {"float32": "f32", "bfloat16": "bf16"}[config.model.compute_dtype],
        mib(per_device["argument_bytes"]),
        mib(result["state_per_device"]),
        mib(result["ideal"]),
        f"{100 * result['state_per_device'] / result['ideal']:.1f}%",
        mib(per_device["temp_bytes"]),
        mib(per_device["output_bytes"]),
        f"{report['flops_per_step']:.3g}",
        f"{report['model_flops_per_step']:.3g}",
        f"{report['compile_seconds']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| model | mesh d x f x t | remat | scan | accum | compute | arguments/dev MiB "
    "| params+opt/dev MiB "
    "| total/N MiB | vs total/N | temp/dev MiB | output/dev MiB | XLA FLOPs/step "
    "| formula FLOPs/step | compile s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)
FOOTNOTE = (
    "N = fsdp x tensor. arguments = params + AdamW state + the batch. XLA FLOPs: the whole "
    "step's, every layer and microbatch counted (compile.json's flops_per_step)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert_base,gpt2_small")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"any of {', '.join(ROWS)}")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the experiment's batch")
    args = parser.parse_args()
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    import jax

    print(f"{jax.device_count()} {jax.devices()[0].platform} devices", flush=True)
    lines = []
    for name in args.models.split(","):
        for row in rows:
            lines.append(format_row(measure(name, row, args.batch_size)))
            print(lines[-1], file=sys.stderr, flush=True)  # progress: rows take a while
    print(HEADER)
    print("\n".join(lines))
    print(FOOTNOTE)


if __name__ == "__main__":
    main()
