"""Base experiment config, validation with one-line errors, and the workdir snapshot."""

from __future__ import annotations

import ml_collections

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


class ConfigError(ValueError):
    """A mistake in the user's config, data or workdir: printed as one line, exit non-zero."""


def base_config() -> ml_collections.ConfigDict:
    """Defaults every experiment starts from; experiment files fill model/task/data."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict()
    config.task = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict()
    config.data.data_dir = DEFAULT_DATA_DIR

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
    # Peak FLOP/s per device for MFU. 0 = look the device up in fmjax.train.metrics.PEAK_FLOPS
    # (CPU has no entry: MFU is reported as n/a unless this is set).
    config.train.peak_flops_per_device = 0.0

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices not used by the other axes
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    config.sharding = ml_collections.ConfigDict()
    config.sharding.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
    return config
