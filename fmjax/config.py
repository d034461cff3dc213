"""Base experiment config, validation with one-line errors, and the workdir snapshot."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time

import ml_collections

from fmjax.errors import ConfigError
from fmjax.train.storage import is_object_store, read_json, workdir_path, write_json

DEFAULT_DATA_DIR = "~/.cache/fmjax/data"

# Logical axis name -> mesh axes. Parameters and activations name their axes logically
# (see fmjax/models); these rules decide the parallelism. A config may replace them.
DEFAULT_LOGICAL_AXIS_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("position", None),
    ("token_type", None),
    ("norm", None),
    ("embed_transform", None),
    ("patch", None),  # flattened p*p*C pixels of an image patch (ViT patch embedding)
    ("classes", None),  # classification head outputs
    ("layers", None),  # the stacked-blocks axis of model.scan_layers=True
    ("projection", None),  # contrastive towers' shared embedding space
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)
# Batches (every array with a leading example axis) are split over these mesh axes.
BATCH_MESH_AXES = ("data", "fsdp")


def base_config() -> ml_collections.ConfigDict:
    """Defaults every experiment starts from; experiment files fill model/task/data."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict()
    config.task = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict()
    config.data.data_dir = DEFAULT_DATA_DIR
    # Input pipeline (fmjax/data/pipeline.py); none of these changes the batches.
    config.data.worker_count = 0  # grain worker processes decoding/augmenting; 0: in-process
    config.data.read_threads = 1  # threads per process reading batches ahead
    config.data.prefetch_buffer = 4  # batches read ahead (per worker)

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 1000
    config.train.batch_size = 32  # global batch, across all devices and processes
    config.train.log_every = 10
    config.train.eval_every = 500
    config.train.eval_batches = 8
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 100
    config.train.schedule = "linear"  # linear | cosine | constant (after warmup)
    config.train.end_learning_rate_factor = 0.0
    config.train.weight_decay = 0.01
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.999
    config.train.adam_eps = 1e-6
    config.train.grad_clip_norm = 1.0
    # A new run starts from this pretrained workdir / checkpoint path: every parameter whose path
    # it holds is copied, the others (e.g. a classification head) keep their fresh init. Resuming
    # the run's own checkpoints ignores it. See fmjax/train/init_from.py.
    config.train.init_from = ""
    # Comma-separated top-level parameter names that train ("head": a linear probe of a frozen
    # encoder); '' trains every parameter. See fmjax/train/optim.py.
    config.train.trainable = ""
    # Peak FLOP/s per device for MFU. 0 = look the device up in fmjax.train.metrics.PEAK_FLOPS
    # (CPU has no entry: MFU is reported as n/a unless this is set).
    config.train.peak_flops_per_device = 0.0
    # A step with a non-finite loss or gradient never updates the params; "skip" counts and logs
    # it and goes on, "halt" stops the run with an error (the last good checkpoint is kept).
    config.train.nonfinite = "skip"
    # Split each global batch into this many microbatches, run one after another (lax.scan) with
    # their gradients added up: activation memory of batch_size / grad_accum_steps examples, the
    # same update as the whole batch (see fmjax/train/step.py: accumulated_loss_and_grads).
    config.train.grad_accum_steps = 1

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True
    # On SIGTERM / a preemption notice the current step is saved before exiting, however long it
    # takes; past this many seconds a warning says the scheduler's grace period may be too short.
    config.checkpoint.preemption_grace_seconds = 60.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices not used by the other axes
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    # Multi-slice / multi-host: how many slices (TPU) or process groups (hosts) each axis spans
    # over the slow network (DCN); the axis sizes above stay the totals. 1 x 1 x 1: one slice.
    config.mesh.dcn = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))

    # Multi-process start-up (fmjax/parallel/distributed.py, launch/): auto | explicit | slurm |
    # tpu | none. "auto": an explicit coordinator (below, or FMJAX_COORDINATOR,
    # FMJAX_NUM_PROCESSES, FMJAX_PROCESS_ID), else Slurm, else a Cloud TPU VM, else one process.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.cluster = "auto"
    config.distributed.coordinator_address = ""  # host:port of process 0
    config.distributed.num_processes = 0  # 0: from the environment
    config.distributed.process_id = -1  # -1: from the environment
    config.distributed.initialization_timeout = 300  # seconds to wait for every process

    config.sharding = ml_collections.ConfigDict()
    config.sharding.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
    # A folder (local, or gs://...) where JAX keeps compiled programs across runs, so a resumed
    # or repeated run skips recompiling; "" = off (or JAX_COMPILATION_CACHE_DIR's). The launchers
    # set it. See apply_compilation_cache.
    config.compilation_cache_dir = ""
    return config


def text_corpus_fields(corpus: str = "shakespeare") -> dict:
    """The data fields of the text-pretraining experiments (see fmjax/data/preparation.py)."""
    return dict(
        corpus=corpus,  # shakespeare | gcide | tfds:<name> | files:<glob>
        source_dir="",  # an existing copy of a bundled corpus's raw files (skips the fetch)
        text_field="text",  # the field / column holding the text of .jsonl / .parquet records
        validation_files="",  # files:<glob> of held-out files, or
        validation_fraction=0.01,  # this fraction of the documents, chosen by their hash
        tokenizer_sample_bytes=64_000_000,  # a bounded, seeded sample the tokenizer trains on
        prepare_workers=0,  # processes preparing the shards; 0 = every core
        beam_pipeline_options="",  # e.g. "--runner=DataflowRunner ...": prepare with Apache Beam
    )


# Config sections a workdir's checkpoints depend on: resuming with other values is refused.
RUN_IDENTITY_FIELDS = (
    "model",
    "task",
    "data.corpus",
    "data.seq_len",
    "data.dataset",
    "data.image_size",
    "seed",
)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks what the parser cannot (sizes, divisibility); raises ConfigError naming the fix."""
    from fmjax.parallel.mesh import resolve_mesh_shape

    for section in ("model", "task", "data", "train", "checkpoint", "mesh"):
        if section not in config:
            raise ConfigError(
                f"config has no '{section}' section; start from fmjax.config.base_config()"
            )
    from fmjax.models import model_settings

    model_settings(config.model)  # every model field known and of its type, or a ConfigError
    mesh = resolve_mesh_shape(config.mesh, num_devices)
    batch_size = int(config.train.batch_size)
    data_parallel = mesh["data"] * mesh["fsdp"]
    if batch_size <= 0 or batch_size % data_parallel:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the data-parallel size "
            f"mesh.data*mesh.fsdp={data_parallel}; use a multiple of {data_parallel}"
        )
    accum_steps = int(config.train.get("grad_accum_steps", 1))
    if accum_steps < 1 or batch_size % (accum_steps * data_parallel):
        raise ConfigError(
            f"train.batch_size={batch_size} must split into train.grad_accum_steps={accum_steps} "
            f"microbatches of a multiple of mesh.data*mesh.fsdp={data_parallel} examples; use a "
            f"batch_size that is a multiple of {max(accum_steps, 1) * data_parallel}"
        )
    # No check against the process count: each process reads one of the batch's row groups
    # (parallel/mesh.process_batch_block), whose number divides mesh.data*mesh.fsdp, so the check
    # above covers it; with tensor spanning processes several processes read the same rows.
    for field in ("num_steps", "log_every", "eval_every", "eval_batches"):
        if int(config.train[field]) <= 0:
            raise ConfigError(f"train.{field} must be positive, got {config.train[field]}")
    if config.train.get("nonfinite", "skip") not in ("skip", "halt"):
        raise ConfigError(
            f"train.nonfinite must be 'skip' or 'halt', got {config.train.nonfinite!r}"
        )
    if int(config.checkpoint.every_steps) <= 0 or int(config.checkpoint.keep) <= 0:
        raise ConfigError("checkpoint.every_steps and checkpoint.keep must be positive")
    seq_len = config.data.get("seq_len")
    if seq_len is not None and seq_len > config.model.get("max_seq_len", seq_len):
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model.max_seq_len={config.model.max_seq_len}; "
            "raise model.max_seq_len or lower data.seq_len"
        )


# Model fields that change memory and speed, not the parameters: a run may resume with others.
RESUMABLE_MODEL_FIELDS = ("remat", "attention_backend")


def _identity(config: ml_collections.ConfigDict, dotted: str):
    """The value of a RUN_IDENTITY_FIELDS entry, as compared between a workdir and a config."""
    value = _field(config, dotted)
    if dotted == "model" and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in RESUMABLE_MODEL_FIELDS}
        value.setdefault("scan_layers", False)  # runs from before the field existed
    return value


def _field(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if hasattr(value, "get") else None
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a workdir that holds a run of another model/task/data, or that can't be written."""
    path = workdir_path(workdir) / "config.json"
    if path.exists():
        previous = ml_collections.ConfigDict(read_json(path))
        for field in RUN_IDENTITY_FIELDS:
            old, new = _identity(previous, field), _identity(config, field)
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(
                new, sort_keys=True, default=str
            ):
                raise ConfigError(
                    f"workdir {workdir} holds a run with a different {field} "
                    f"({_diff(old, new)}); use a new --workdir or the original config"
                )
    if is_object_store(workdir):  # permissions show at the lock, the first write
        return
    parent = os.path.abspath(os.path.expanduser(workdir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK) or not os.path.isdir(parent):
        raise ConfigError(f"cannot write to workdir {workdir} ({parent} is not a writable folder)")


def _diff(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])
    return f"{old!r} -> {new!r}"


def write_snapshot(config: ml_collections.ConfigDict, workdir: str, data_fingerprint: dict) -> None:
    """Writes workdir/config.json (resolved config) and workdir/manifest.json (provenance)."""
    import jax

    if jax.process_index() != 0:
        return
    workdir = workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", json.loads(config.to_json()))
    devices = jax.devices()
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "git_revision": _git_revision(),
        "packages": _package_versions(),
        "python": sys.version.split()[0],
        "devices": {
            "platform": devices[0].platform,
            "device_kind": devices[0].device_kind,
            "num_devices": len(devices),
            "num_processes": jax.process_count(),
        },
        "seed": int(config.seed),
        "data": data_fingerprint,
    }
    write_json(workdir / "manifest.json", manifest)


PACKAGES = (
    "fmjax",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "tokenizers",
    "ml_collections",
    "numpy",
)


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_revision() -> str | None:
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", source, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def apply_compilation_cache(config: ml_collections.ConfigDict) -> None:
    """Points JAX's persistent compilation cache at config.compilation_cache_dir, if set.

    Call it before the first compilation: JAX opens the cache once, at its first compile.
    Programs that compile faster than jax_persistent_cache_min_compile_time_secs (1 s by
    default) are not stored.
    """
    directory = str(config.get("compilation_cache_dir", "") or "")
    if not directory:
        return
    import jax

    if not is_object_store(directory):
        directory = os.path.abspath(os.path.expanduser(directory))
    jax.config.update("jax_compilation_cache_dir", directory)


def resolve_auto_fields(config: ml_collections.ConfigDict, backend: str) -> None:
    """Fills fields left as "auto" for the platform `backend` ("cpu" | "gpu" | "tpu"):
    compute_dtype (bfloat16 on GPU/TPU, float32 on CPU) and attention_backend (the fastest
    kernel the model allows, logged once); refuses an attention backend that cannot run here."""
    from fmjax.models.attention_backends import AUTO_CHOICE, check_attention_backend, kernel_problem

    model = config.model
    if model.get("compute_dtype") == "auto":
        model.compute_dtype = "float32" if backend == "cpu" else "bfloat16"
    if "attention_backend" not in model:
        return
    requested = model.attention_backend
    seq_len = config.data.get("seq_len") if "data" in config else None
    model.attention_backend = check_attention_backend(model, backend, seq_len)
    if requested == "auto":
        candidate = AUTO_CHOICE.get(backend)
        problem = candidate and kernel_problem(candidate, model, backend, seq_len)
        reason = f"{candidate} not used: {problem}" if problem else f"on {backend}"
        _log(f"model.attention_backend=auto -> {model.attention_backend!r} ({reason})")


def _log(message: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(f"fmjax: {message}", flush=True)
