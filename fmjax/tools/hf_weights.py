"""fmjax <-> Hugging Face `transformers` weights for BERT (BertForMaskedLM, and the classifier
as BertForSequenceClassification) and GPT-2.

One table per family lists every fmjax parameter with its transformers name and layout; the
same table converts in both directions, so export and import cannot drift apart.

Layouts (fmjax -> HF; import applies the inverse and reshapes to the fmjax shape):
  same             identical (LayerNorm scales/biases, position and token-type tables)
  flat             flattened (per-head biases [heads, head_dim] -> [heads * head_dim])
  linear           torch nn.Linear weight [out, in] = kernel [in, out...] flattened, transposed
  linear_heads_in  the same for a kernel whose inputs are heads: [heads, head_dim, out]
  conv1d           GPT-2 Conv1D weight [in, out] = kernel [in, out...] flattened
  conv1d_heads_in  the same for a [heads, head_dim, out] kernel
  vocab            the first `vocab_size` rows of a [vocab, ...] table (the tokenizer's rows;
                   fmjax may pad the vocabulary to shard it: padding rows are dropped on
                   export and filled with zeros on import)
  vocab_t          an untied LM head [embed, vocab] <-> [vocab, embed]
  unsqueeze        HF adds leading axes of size 1 (ViT's position table [1, N, d], class token
                   [1, 1, d]); `hf_shape` is the HF shape
  conv_patch       ViT's patch Conv2d weight [d, C, p, p] = the patch kernel [p*p*C, d] (pixels
                   in (y, x, c) order, fmjax/models/vit.py: patchify); `hf_shape` = (d, C, p, p)
GPT-2 fuses query, key and value into one `c_attn` tensor: `part` j in 0..2 is its slice.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from fmjax.errors import ConfigError

# HF buffers that are not weights (attention-mask tables, position index tables).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids")


@dataclasses.dataclass(frozen=True)
class Weight:
    """One fmjax parameter and where it lives in a transformers state dict."""

    path: tuple  # in the nnx.to_pure_dict params, e.g. ("encoder", "layers", 0, "mlp", ...)
    hf_name: str
    layout: str
    part: int | None = None  # slice j of a fused query/key/value tensor
    optional: bool = False  # may be missing from an HF checkpoint (then freshly initialized)
    hf_shape: tuple | None = None  # the HF shape, for the unsqueeze / conv_patch layouts


def _norm(path: tuple, hf_name: str, optional: bool = False) -> list[Weight]:
    return [
        Weight((*path, "scale"), f"{hf_name}.weight", "same", optional=optional),
        Weight((*path, "bias"), f"{hf_name}.bias", "same", optional=optional),
    ]


def _dense(path: tuple, hf_name: str, layout: str, optional: bool = False) -> list[Weight]:
    return [
        Weight((*path, "kernel"), f"{hf_name}.weight", layout, optional=optional),
        Weight((*path, "bias"), f"{hf_name}.bias", "flat", optional=optional),
    ]


def bert_weights(num_layers: int) -> list[Weight]:
    """fmjax Bert <-> BertForMaskedLM. The decoder weight is tied to the word embeddings."""
    table = [
        Weight(("token_embed", "embedding"), "bert.embeddings.word_embeddings.weight", "vocab"),
        Weight(
            ("position_embed", "embedding"), "bert.embeddings.position_embeddings.weight", "same"
        ),
        Weight(("type_embed", "embedding"), "bert.embeddings.token_type_embeddings.weight", "same"),
        *_norm(("embed_norm",), "bert.embeddings.LayerNorm"),
        *_dense(("mlm_transform",), "cls.predictions.transform.dense", "linear", optional=True),
        *_norm(("mlm_norm",), "cls.predictions.transform.LayerNorm", optional=True),
        Weight(("mlm_bias",), "cls.predictions.bias", "vocab", optional=True),
    ]
    for i in range(num_layers):
        table += _encoder_layer(
            i, "bert", "attention.self", "attention.output.LayerNorm", "output.LayerNorm"
        )
    return table


def _encoder_layer(
    index: int, prefix: str, self_attention: str, attention_norm: str, mlp_norm: str
) -> list[Weight]:
    """Block `index` of fmjax's encoder <-> HF's BertLayer layout, which ViTLayer shares but
    for the names of its self-attention and its two LayerNorms."""
    path, name = ("encoder", "layers", index), f"{prefix}.encoder.layer.{index}"
    table = []
    for part in ("query", "key", "value"):
        table += _dense((*path, "attention", part), f"{name}.{self_attention}.{part}", "linear")
    table += _dense(
        (*path, "attention", "out"), f"{name}.attention.output.dense", "linear_heads_in"
    )
    table += _norm((*path, "attention_norm"), f"{name}.{attention_norm}")
    table += _dense((*path, "mlp", "wi"), f"{name}.intermediate.dense", "linear")
    table += _dense((*path, "mlp", "wo"), f"{name}.output.dense", "linear")
    table += _norm((*path, "mlp_norm"), f"{name}.{mlp_norm}")
    return table


def bert_classifier_weights(num_layers: int) -> list[Weight]:
    """fmjax BertClassifier (pooler=True) <-> BertForSequenceClassification: the encoder of
    `bert_weights`, BERT's tanh pooler on [CLS] and the linear classifier."""
    encoder = [w for w in bert_weights(num_layers) if not w.hf_name.startswith("cls.")]
    return [
        *encoder,
        *_dense(("pooler",), "bert.pooler.dense", "linear"),
        *_dense(("classifier",), "classifier", "linear"),
    ]


def gpt2_weights(num_layers: int, tie_embeddings: bool) -> list[Weight]:
    """fmjax Gpt (learned positions) <-> GPT2LMHeadModel; lm_head only when untied."""
    table = [
        Weight(("token_embed", "embedding"), "transformer.wte.weight", "vocab"),
        Weight(("position_embed", "embedding"), "transformer.wpe.weight", "same"),
        *_norm(("decoder", "final_norm"), "transformer.ln_f"),
    ]
    if not tie_embeddings:
        table.append(Weight(("lm_head",), "lm_head.weight", "vocab_t"))
    for i in range(num_layers):
        path, name = ("decoder", "layers", i), f"transformer.h.{i}"
        for j, part in enumerate(("query", "key", "value")):
            table += [
                Weight(
                    (*path, "attention", part, "kernel"), f"{name}.attn.c_attn.weight", "conv1d", j
                ),
                Weight((*path, "attention", part, "bias"), f"{name}.attn.c_attn.bias", "flat", j),
            ]
        table += _dense((*path, "attention", "out"), f"{name}.attn.c_proj", "conv1d_heads_in")
        table += _norm((*path, "attention_norm"), f"{name}.ln_1")
        table += _dense((*path, "mlp", "wi"), f"{name}.mlp.c_fc", "conv1d")
        table += _dense((*path, "mlp", "wo"), f"{name}.mlp.c_proj", "conv1d")
        table += _norm((*path, "mlp_norm"), f"{name}.ln_2")
    return table


def vit_weights(model: ml_collections.ConfigDict) -> list[Weight]:
    """fmjax VisionTransformer (pooling="cls") <-> ViTForImageClassification, under the names
    transformers 4 writes (transformers 5 reads them too; `normalize_names` maps its own)."""
    d, p, c = model.embed_dim, model.patch_size, model.num_channels
    tokens = (model.image_size // p) ** 2 + 1
    table = [
        Weight(("cls_token",), "vit.embeddings.cls_token", "unsqueeze", hf_shape=(1, 1, d)),
        Weight(
            ("position_embed", "embedding"),
            "vit.embeddings.position_embeddings",
            "unsqueeze",
            hf_shape=(1, tokens, d),
        ),
        Weight(
            ("patch_embed", "kernel"),
            "vit.embeddings.patch_embeddings.projection.weight",
            "conv_patch",
            hf_shape=(d, c, p, p),
        ),
        Weight(("patch_embed", "bias"), "vit.embeddings.patch_embeddings.projection.bias", "same"),
        *_norm(("encoder", "final_norm"), "vit.layernorm"),
        *_dense(("head",), "classifier", "linear", optional=True),  # absent from ViTModel
    ]
    for i in range(model.num_layers):
        table += _encoder_layer(
            i, "vit", "attention.attention", "layernorm_before", "layernorm_after"
        )
    return table


def weights_of(model: ml_collections.ConfigDict) -> list[Weight]:
    """The table of an fmjax model config (bert, or gpt with learned positions)."""
    if model.family == "bert":
        return bert_weights(model.num_layers)
    if model.family == "bert_classifier":
        return bert_classifier_weights(model.num_layers)
    if model.family == "gpt":
        return gpt2_weights(model.num_layers, bool(model.tie_embeddings))
    if model.family == "vit":
        return vit_weights(model)
    raise ConfigError(
        f"model.family={model.family!r}: only bert, bert_classifier, gpt and vit map to "
        "transformers"
    )


# --- fmjax -> HF ------------------------------------------------------------------------------


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def _to_hf_layout(x: np.ndarray, weight: Weight, vocab_size: int | None) -> np.ndarray:
    layout = weight.layout
    if layout == "unsqueeze":
        return x.reshape(weight.hf_shape)
    if layout == "conv_patch":
        d, channels, p, _ = weight.hf_shape
        return x.reshape(p, p, channels, d).transpose(3, 2, 0, 1)
    if layout in ("linear", "conv1d"):
        x = x.reshape(x.shape[0], -1)
    elif layout in ("linear_heads_in", "conv1d_heads_in"):
        x = x.reshape(-1, x.shape[-1])
    elif layout == "flat":
        x = x.reshape(-1)
    elif layout == "vocab":
        x = x[:vocab_size]
    elif layout == "vocab_t":
        x = x[:, :vocab_size]
    return x.T if layout in ("linear", "linear_heads_in", "vocab_t") else x


def to_hf(
    params: dict, table: list[Weight], vocab_size: int | None = None
) -> dict[str, np.ndarray]:
    """fmjax params (pure dict) -> transformers state dict (float32 numpy), first vocab rows."""
    parts: dict[str, dict[int, np.ndarray]] = {}
    for weight in table:
        value = np.asarray(_get(params, weight.path), np.float32)
        parts.setdefault(weight.hf_name, {})[weight.part or 0] = _to_hf_layout(
            value, weight, vocab_size
        )
    return {
        name: np.ascontiguousarray(np.concatenate([by_part[j] for j in sorted(by_part)], axis=-1))
        for name, by_part in parts.items()
    }


def bert_to_hf(params: dict, num_layers: int, vocab_size: int | None = None) -> dict:
    """fmjax BERT params -> BertForMaskedLM state dict (numpy)."""
    return to_hf(params, bert_weights(num_layers), vocab_size)


def gpt2_to_hf(
    params: dict, num_layers: int, tie_embeddings: bool = True, vocab_size: int | None = None
) -> dict:
    """fmjax GPT params -> GPT2LMHeadModel state dict (numpy)."""
    return to_hf(params, gpt2_weights(num_layers, tie_embeddings), vocab_size)


# --- HF -> fmjax ------------------------------------------------------------------------------


def normalize_names(tensors: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """Names as a *ForMaskedLM / *LMHeadModel / ViTForImageClassification saves them (with
    transformers 4): adds the `bert.` / `transformer.` / `vit.` prefix a base-model checkpoint
    lacks, renames pre-2019 LayerNorm gamma/beta and transformers 5's ViT names."""
    prefix = {"bert": "bert.", "gpt": "transformer.", "vit": "vit."}[family]
    heads = ("cls.", "lm_head.", "classifier.")
    has_prefix = any(name.startswith(prefix) for name in tensors)
    out = {}
    for name, value in tensors.items():
        if not has_prefix and not name.startswith(heads):
            name = prefix + name
        for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
            if name.endswith(old):
                name = name.removesuffix(old) + new
        if family == "vit":
            for pattern, replacement in VIT_RENAMES:
                name = re.sub(pattern, replacement, name)
        out[name] = value
    if "cls.predictions.bias" not in out and "cls.predictions.decoder.bias" in out:
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


# transformers 5 ViT names -> the transformers 4 names the table uses.
VIT_RENAMES = (
    (
        r"^vit\.layers\.(\d+)\.attention\.q_proj\.",
        r"vit.encoder.layer.\1.attention.attention.query.",
    ),
    (r"^vit\.layers\.(\d+)\.attention\.k_proj\.", r"vit.encoder.layer.\1.attention.attention.key."),
    (
        r"^vit\.layers\.(\d+)\.attention\.v_proj\.",
        r"vit.encoder.layer.\1.attention.attention.value.",
    ),
    (r"^vit\.layers\.(\d+)\.attention\.o_proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
    (r"^vit\.layers\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
    (r"^vit\.layers\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
    (r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
)


def _from_hf_layout(value: np.ndarray, weight: Weight, shape: tuple[int, ...]) -> np.ndarray:
    if weight.part is not None:
        value = np.split(value, 3, axis=-1)[weight.part]
    if weight.layout in ("linear", "linear_heads_in", "vocab_t"):
        value = value.T
    elif weight.layout == "conv_patch" and value.ndim == 4:  # [d, C, p, p] -> [p, p, C, d]
        value = value.transpose(2, 3, 1, 0)
    if weight.layout == "vocab":  # zero rows for fmjax's vocabulary padding
        rows = shape[0] - value.shape[0]
        value = np.concatenate([value, np.zeros((rows, *value.shape[1:]), value.dtype)])
    elif weight.layout == "vocab_t":
        columns = shape[1] - value.shape[1]
        value = np.concatenate([value, np.zeros((value.shape[0], columns), value.dtype)], axis=1)
    exact = weight.layout.startswith("vocab")
    if (value.shape != shape) if exact else (value.size != math.prod(shape)):
        raise ConfigError(
            f"HF tensor {weight.hf_name!r} does not fit fmjax {'/'.join(map(str, weight.path))} "
            f"{shape} (after layout '{weight.layout}': {value.shape}); is config.json its config?"
        )
    return value.reshape(shape)


def from_hf(
    tensors: dict[str, np.ndarray],
    table: list[Weight],
    target: dict,
    fresh_params: Callable[[], dict],
) -> tuple[dict, list[str]]:
    """transformers tensors (normalized names) -> fmjax params shaped like `target`, and the
    names of tensors that have no fmjax counterpart. Optional weights missing from `tensors`
    (BERT's MLM head in a BertModel checkpoint) come from `fresh_params()`."""
    params: dict = {}
    used: set[str] = set()
    fresh = None
    for weight in table:
        shape = tuple(_get(target, weight.path).shape)
        if weight.hf_name in tensors:
            value = _from_hf_layout(np.asarray(tensors[weight.hf_name], np.float32), weight, shape)
            used.add(weight.hf_name)
        elif weight.optional:
            fresh = fresh_params() if fresh is None else fresh
            value = np.asarray(_get(fresh, weight.path))
        else:
            raise ConfigError(f"the HF weights have no tensor {weight.hf_name!r}")
        node = params
        for key in weight.path[:-1]:
            node = node.setdefault(key, {})
        node[weight.path[-1]] = value
    filled = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    for path, _ in jax.tree_util.tree_leaves_with_path(target):
        if jax.tree_util.keystr(path) not in filled:  # a table that misses a parameter
            raise ConfigError(f"no HF tensor maps to fmjax parameter {jax.tree_util.keystr(path)}")
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.weight"}
    unused = sorted(
        name for name in set(tensors) - used - tied if not name.endswith(IGNORED_SUFFIXES)
    )
    return params, unused
