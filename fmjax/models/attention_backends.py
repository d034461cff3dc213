"""Attention backends behind model.attention_backend: the XLA einsum reference, cuDNN flash
attention (GPU) and Pallas splash attention (TPU), and the start-up check that picks one.

Masks travel as structure (AttentionMask: key padding, causal, packed-document segment ids)
rather than a dense [B, 1, L, L] array, so a fused kernel can skip masked blocks instead of
reading a mask: cuDNN gets `is_causal` and key lengths, splash a causal mask and segment ids.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen
import jax
import jax.numpy as jnp

from fmjax.errors import ConfigError

BACKENDS = ("auto", "xla", "cudnn", "splash")
# The platform each kernel runs on ("xla" runs everywhere).
KERNEL_PLATFORMS = {"cudnn": "gpu", "splash": "tpu"}
# What "auto" takes per platform when the model allows it (else "xla").
AUTO_CHOICE = {"gpu": "cudnn", "tpu": "splash"}
# Splash attention's default tiles (BlockSizes.get_default()): sequences are whole tiles.
SPLASH_BLOCK = 128
# Splash-attention's logical layout [B, H, L, D]: batch and heads sharded as the activations.
SPLASH_AXES = ("activation_batch", "activation_heads", "activation_length", "activation_kv")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may attend, as the structure fused kernels understand.

    key_padding [B, Lk]: 1 = real key. Real tokens come first in a row (the loaders pad on the
        right), which is what lets cuDNN take the padding as one length per row.
    segment_ids [B, L]: packed-document ids of a self-attention; a query sees only its own
        document's keys.
    causal: query i sees keys 0..i.
    explicit [B, 1, Lq, Lk]: any other boolean mask (the KV-cache decoding path); xla only.
    """

    key_padding: jax.Array | None = None
    segment_ids: jax.Array | None = None
    explicit: jax.Array | None = None
    causal: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def dense(self, query_length: int, key_length: int) -> jax.Array | None:
        """The boolean mask broadcastable to [B, 1, Lq, Lk] (True = attend), None = all."""
        parts = []
        if self.key_padding is not None:
            parts.append(self.key_padding.astype(bool)[:, None, None, :])
        if self.segment_ids is not None:
            ids = self.segment_ids
            parts.append(ids[:, None, :, None] == ids[:, None, None, :])
        if self.causal:
            parts.append(jnp.tril(jnp.ones((query_length, key_length), bool))[None, None])
        if self.explicit is not None:
            parts.append(self.explicit)
        if not parts:
            return None
        mask = parts[0]
        for part in parts[1:]:
            mask = mask & part
        return mask


def as_attention_mask(mask: AttentionMask | jax.Array | None) -> AttentionMask:
    """An AttentionMask of a structured mask, a dense boolean mask or None (attend everywhere)."""
    if isinstance(mask, AttentionMask):
        return mask
    return AttentionMask(explicit=mask)


def check_attention_backend(model: dict, platform: str, seq_len: int | None = None) -> str:
    """The backend model.attention_backend names on `platform` ("cpu" | "gpu" | "tpu"), "auto"
    resolved; ConfigError naming the alternative for a combination a kernel cannot run.

    `model` is a model config (a contrastive model's towers are checked each); seq_len, when
    known (data.seq_len), is the attention length, else the model's own maximum.
    """
    requested = model.get("attention_backend", "auto")
    if requested not in BACKENDS:
        raise ConfigError(
            f"model.attention_backend must be one of {list(BACKENDS)}, got {requested!r}"
        )
    if requested == "xla":
        return requested
    candidate = AUTO_CHOICE.get(platform, "xla") if requested == "auto" else requested
    problem = kernel_problem(candidate, model, platform, seq_len)
    if requested == "auto":
        return "xla" if problem else candidate
    if problem:
        raise ConfigError(
            f"model.attention_backend={requested!r} cannot run here: {problem}; "
            "set model.attention_backend='xla' (or 'auto')"
        )
    return requested


def kernel_problem(
    backend: str, model: dict, platform: str, seq_len: int | None = None
) -> str | None:
    """Why the fused `backend` cannot run this model on `platform`, or None if it can."""
    if backend == "xla":
        return None
    if platform != KERNEL_PLATFORMS[backend]:
        return f"{backend} runs on {KERNEL_PLATFORMS[backend]} only, this is {platform}"
    dropout = float(model.get("attention_dropout_rate", 0.0))
    if dropout > 0:
        return (
            f"{backend} cannot drop attention probabilities (model.attention_dropout_rate="
            f"{dropout}; GPU/TPU recipes use 0, as MosaicBERT and Cramming do)"
        )
    dtype = str(model.get("compute_dtype", "float32"))
    if backend == "cudnn" and dtype not in ("bfloat16", "float16"):
        return f"cuDNN flash attention needs bfloat16/float16, model.compute_dtype={dtype!r}"
    for tower in ("image", "text"):  # contrastive towers: shared fields above, sizes their own
        if tower in model:
            shared = {k: v for k, v in model.items() if k not in ("image", "text")}
            problem = kernel_problem(backend, {**shared, **model[tower]}, platform, None)
            if problem:
                return f"model.{tower}: {problem}"
    head_dim = int(model.get("head_dim", 64))
    if backend == "cudnn" and (head_dim > 128 or head_dim % 8):
        return f"cuDNN flash attention needs head_dim <= 128 and a multiple of 8, got {head_dim}"
    length = seq_len or attention_length(model)
    if backend == "splash" and length and length % SPLASH_BLOCK:
        return f"splash attention needs whole {SPLASH_BLOCK}-token tiles, sequences are {length}"
    return None


def attention_length(model: dict) -> int | None:
    """Tokens per attention of a model config: max_seq_len, or a ViT's patches (+ class token)."""
    if "max_seq_len" in model:
        return int(model["max_seq_len"])
    if "image_size" in model and "patch_size" in model:
        patches = (int(model["image_size"]) // int(model["patch_size"])) ** 2
        return patches + (1 if model.get("pooling") == "cls" else 0)
    return None


def cudnn_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    implementation: str = "cudnn",
) -> jax.Array:
    """jax.nn.dot_product_attention over [B, L, H, D]: causal through is_causal, padding through
    key lengths, packed documents (and any explicit mask) as its boolean `mask` (jax 0.10's
    public API has no segment ids; cuDNN adds the mask as a bias). implementation="xla" runs the
    very same call through jax's reference, which is how CPU tests check these arguments."""
    key_lengths = None
    if mask.key_padding is not None:
        key_lengths = jnp.sum(mask.key_padding.astype(jnp.int32), axis=-1)
    dense = AttentionMask(segment_ids=mask.segment_ids, explicit=mask.explicit).dense(
        query.shape[1], key.shape[1]
    )
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        mask=dense,
        is_causal=mask.causal,
        key_value_seq_lengths=key_lengths,
        implementation=implementation,
    )


def splash_segment_ids(mask: AttentionMask) -> jax.Array | None:
    """[B, L] int32 ids for splash attention's SegmentIds: a query sees keys of its own id.

    Padding becomes one more segment (id -1): real tokens never see padded keys, padded queries
    see only padding (their outputs are never used).
    """
    ids = None if mask.segment_ids is None else mask.segment_ids.astype(jnp.int32)
    if mask.key_padding is not None:
        real = mask.key_padding.astype(bool)
        ids = jnp.where(real, 0 if ids is None else ids, -1)
    return ids


def splash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Pallas splash attention (TPU) over [B, L, H, D] with causal and segment masks.

    Runs per device under shard_map when a mesh is set (a Pallas call is not partitioned by
    XLA): batch and heads split as the activations' logical rules say. interpret=True runs the
    kernel in the Pallas interpreter (CPU tests).
    """
    if mask.explicit is not None:
        raise ValueError("splash attention takes padding/causal/segment masks, not a dense mask")
    length = query.shape[1]
    if length % SPLASH_BLOCK:
        raise ValueError(f"splash attention needs whole {SPLASH_BLOCK}-token tiles, got {length}")
    scale = 1.0 / math.sqrt(query.shape[-1])  # the kernel does not scale QKᵀ itself
    to_heads_major = (0, 2, 1, 3)  # [B, L, H, D] -> [B, H, L, D]
    q, k, v = ((x.transpose(to_heads_major)) for x in (query * scale, key, value))
    ids = splash_segment_ids(mask)
    operands = (q, k, v) if ids is None else (q, k, v, ids)

    def attend(*local):
        return _splash_per_device(*local, causal=mask.causal, interpret=interpret)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        spec = flax.linen.logical_to_mesh_axes(SPLASH_AXES)
        ids_spec = jax.sharding.PartitionSpec(spec[0], spec[2])
        in_specs = (spec, spec, spec) if ids is None else (spec, spec, spec, ids_spec)
        attend = jax.shard_map(attend, in_specs=in_specs, out_specs=spec, check_vma=False)
    return attend(*operands).transpose(to_heads_major)


def _splash_per_device(q, k, v, ids=None, *, causal: bool, interpret: bool) -> jax.Array:
    """Splash attention on one device's [b, h, L, D] block, vmapped over its rows."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    heads, length = q.shape[1], q.shape[2]
    head_mask = splash.CausalMask((length, length)) if causal else splash.FullMask((length, length))
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([head_mask] * heads),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    if ids is None:
        return jax.vmap(kernel)(q, k, v)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(s, s)))(
        q, k, v, ids
    )
