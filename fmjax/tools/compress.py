"""Post-training compression of a run's weights, evaluated: int8 quantization or magnitude pruning.

python -m fmjax.tools.compress --workdir runs/bert_tiny_cls --method int8
python -m fmjax.tools.compress --workdir runs/bert_tiny_cls --method prune --sparsity 0.5

int8: every weight matrix (dense / attention kernels, embedding tables) is stored as int8 with
one float32 scale per output channel (per row for embeddings), symmetric:
scale = max |w| / 127 over the channel's inputs, q = round(w / scale), so |w - q * scale| is at
most scale / 2. Biases and LayerNorm parameters stay float32.
prune: in every dense / attention kernel, the fraction --sparsity of weights with the smallest
magnitude is set to zero (per tensor); embeddings, biases and norms are kept. The file stores the
surviving values of a pruned kernel (float32) and a bit mask of where they go.

Both write OUT/model_fp32.safetensors (the original weights) and the compressed file, read each
file back, evaluate the weights it holds with the run's own task and eval data (dequantized to
float32), and print metric before / after and size on disk; OUT (default WORKDIR/compressed)
also gets compress_<method>.json with the numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from fmjax.errors import ConfigError
from fmjax.models import model_settings
from fmjax.params_io import flat_names, stacked_layers, unrolled_layers
from fmjax.tools.workdir import latest_params, read_config, run_cli, tool_parser
from fmjax.train.run import open_run

METHODS = ("int8", "prune")
INT8_MAX = 127


# --- pure functions on one tensor --------------------------------------------------------------


def quantize_int8(
    weights: np.ndarray, input_axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales) with one scale per output channel: the max |w| over
    `input_axes` / 127 (kept as size-1 axes, so values * scales broadcasts back)."""
    weights = np.asarray(weights, np.float32)
    scales = np.max(np.abs(weights), axis=input_axes, keepdims=True) / INT8_MAX
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)  # an all-zero channel stays 0
    values = np.clip(np.rint(weights / scales), -INT8_MAX, INT8_MAX).astype(np.int8)
    return values, scales


def dequantize_int8(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 values * scales."""
    return values.astype(np.float32) * scales


def magnitude_prune(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """The weights with the round(sparsity * size) smallest-magnitude entries set to zero."""
    weights = np.asarray(weights, np.float32)
    count = int(round(sparsity * weights.size))
    pruned = weights.copy().reshape(-1)
    if count > 0:
        pruned[np.argsort(np.abs(pruned), kind="stable")[:count]] = 0.0
    return pruned.reshape(weights.shape)


def pack_sparse(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero values float32, bit mask uint8 packed with np.packbits) of a tensor."""
    flat = np.asarray(weights, np.float32).reshape(-1)
    mask = flat != 0
    return flat[mask], np.packbits(mask)


def unpack_sparse(
    values: np.ndarray, packed_mask: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """The inverse of pack_sparse."""
    size = int(np.prod(shape))
    mask = np.unpackbits(packed_mask, count=size).astype(bool)
    flat = np.zeros(size, np.float32)
    flat[mask] = values
    return flat.reshape(shape)


# --- which tensors, and how --------------------------------------------------------------------


def flat_params(params: dict) -> dict[str, np.ndarray]:
    """{"a/b/c": array} of a nested params dict."""
    return {name: np.asarray(leaf) for name, leaf in flat_names(params).items()}


def input_axes(name: str, flat: dict[str, np.ndarray]) -> tuple[int, ...] | None:
    """The axes a weight matrix reduces over (its inputs), or None for a tensor kept float32.

    A kernel's output axes are its bias's shape (a [embed] -> [heads, head_dim] projection has a
    [heads, head_dim] bias), so its inputs are the leading axes; an embedding table has one
    channel per row.
    """
    array = flat[name]
    if array.ndim < 2:
        return None
    if name.endswith("/embedding"):
        return (array.ndim - 1,)
    if name.endswith("/kernel"):
        bias = flat.get(name[: -len("kernel")] + "bias")
        outputs = bias.ndim if bias is not None else 1
        return tuple(range(array.ndim - outputs))
    return None


def compress_int8(flat: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors to write (int8 values + NAME.scale, or float32) and safetensors metadata."""
    tensors = {}
    for name, array in flat.items():
        axes = input_axes(name, flat)
        if axes is None:
            tensors[name] = np.asarray(array, np.float32)
        else:
            tensors[name], tensors[f"{name}.scale"] = quantize_int8(array, axes)
    return tensors, {"format": "fmjax-int8", "scheme": "symmetric per-output-channel"}


def compress_prune(
    flat: dict[str, np.ndarray], sparsity: float
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors to write (NAME.values + NAME.mask for pruned kernels, or float32) and metadata
    (each pruned kernel's shape)."""
    tensors, metadata = {}, {"format": "fmjax-pruned", "sparsity": str(sparsity)}
    for name, array in flat.items():
        if name.endswith("/kernel") and array.ndim >= 2:
            values, mask = pack_sparse(magnitude_prune(array, sparsity))
            tensors[f"{name}.values"], tensors[f"{name}.mask"] = values, mask
            metadata[f"shape:{name}"] = json.dumps(list(array.shape))
        else:
            tensors[name] = np.asarray(array, np.float32)
    return tensors, metadata


def read_compressed(path: str) -> dict[str, np.ndarray]:
    """The float32 weights a compressed (or plain) safetensors file holds, by name."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    tensors = load_file(path)
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    weights = {}
    for name, array in tensors.items():
        if name.endswith(".scale") or name.endswith(".mask"):
            continue
        if f"{name}.scale" in tensors:
            weights[name] = dequantize_int8(array, tensors[f"{name}.scale"])
        elif name.endswith(".values"):
            base = name[: -len(".values")]
            shape = tuple(json.loads(metadata[f"shape:{base}"]))
            weights[base] = unpack_sparse(array, tensors[f"{base}.mask"], shape)
        else:
            weights[name] = array
    return weights


# --- the tool ----------------------------------------------------------------------------------


def _nested_like(params: dict, flat: dict[str, np.ndarray]) -> dict:
    """`params`' structure with each leaf taken from `flat` by name."""
    names = iter(flat_names(params))
    return jax.tree.map(lambda leaf: np.asarray(flat[next(names)], leaf.dtype), params)


def compress(
    workdir: str, method: str, sparsity: float = 0.5, out: str | None = None
) -> dict[str, Any]:
    """Compresses the latest checkpoint of `workdir`, evaluates before/after; returns the report."""
    from safetensors.numpy import save_file

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {METHODS}, got {method!r}")
    if method == "prune" and not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--sparsity must be in [0, 1), got {sparsity}")
    config = read_config(workdir)
    params, step = latest_params(workdir, config.model)
    stacked = model_settings(config.model).scan_layers
    unrolled = unrolled_layers(params) if stacked else params  # one tensor per layer
    flat = flat_params(unrolled)
    out = out or os.path.join(workdir, "compressed")
    os.makedirs(out, exist_ok=True)
    files = {"fp32": os.path.join(out, "model_fp32.safetensors")}
    save_file({k: np.asarray(v, np.float32) for k, v in flat.items()}, files["fp32"])
    if method == "int8":
        tensors, metadata = compress_int8(flat)
        label = "int8"
    else:
        tensors, metadata = compress_prune(flat, sparsity)
        label = f"pruned{round(sparsity * 100)}"
    files[label] = os.path.join(out, f"model_{label}.safetensors")
    save_file(tensors, files[label], metadata=metadata)

    results = {}
    with open_run(config) as run:  # the run's own task and eval data
        data = run.build_data()
        shardings = run.program.state_shardings["params"]
        for key, path in files.items():
            weights = _nested_like(unrolled, read_compressed(path))
            weights = stacked_layers(weights) if stacked else weights
            results[key] = run.evaluate(jax.device_put(weights, shardings), data)
    compressed = read_compressed(files[label])
    kernels = [n for n in flat if n.endswith("/kernel") and flat[n].ndim >= 2]
    report = {
        "workdir": workdir,
        "step": step,
        "method": method,
        "files": files,
        "bytes": {key: os.path.getsize(path) for key, path in files.items()},
        "metrics": results,
        "kernel_sparsity": float(
            sum(np.sum(compressed[n] == 0) for n in kernels)
            / max(1, sum(flat[n].size for n in kernels))
        ),
        "max_abs_weight_error": float(max(np.max(np.abs(compressed[n] - flat[n])) for n in flat)),
    }
    if method == "prune":
        report["sparsity"] = sparsity
    with open(os.path.join(out, f"compress_{label}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_report(report: dict) -> str:
    """Metric before / after and size on disk as a table."""
    (before_key, before), (after_key, after) = report["metrics"].items()
    names = [k for k, v in before.items() if isinstance(v, float) and k in after]
    names = [k for k in names if not k.startswith("num_")]  # counts, not metrics
    rows = [("metric", before_key, after_key, "change")]
    rows += [
        (n, f"{before[n]:.4f}", f"{after[n]:.4f}", f"{after[n] - before[n]:+.4f}") for n in names
    ]
    size_before, size_after = report["bytes"][before_key], report["bytes"][after_key]
    rows.append(
        (
            "size on disk",
            f"{size_before / 2**20:.2f} MiB",
            f"{size_after / 2**20:.2f} MiB",
            f"x{size_after / size_before:.3f}",
        )
    )
    rows.append(("kernel sparsity", "", f"{report['kernel_sparsity']:.3f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("fmjax.tools.compress", __doc__, "fmjax run directory")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--sparsity", type=float, default=0.5, help="prune: fraction set to 0")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/compressed)")
    args = parser.parse_args(argv)
    report = run_cli(compress, args.workdir, args.method, args.sparsity, args.out)
    print(format_report(report))
    print(f"fmjax: wrote {report['files'][list(report['files'])[-1]]}")


if __name__ == "__main__":
    main()
