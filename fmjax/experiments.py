"""What experiment files share: family model fields and shapes, recipes, presets, loading by name.

Experiment files (experiments/*.py) are loaded by path (ml_collections config_flags), so they
cannot import each other; they import this module instead:

    from fmjax.experiments import bert_model, parse_preset

    def get_config(preset=None):
        presets = parse_preset(preset, "bert_mini", smoke=False)
        config = base_config()
        config.model = bert_model("mini", vocab_size=8192)
        if presets.smoke:
            ...

Tests and tools load an experiment by name: `experiment_config("bert_tiny", "smoke")`.
"""

from __future__ import annotations

import importlib.util
import os
import types

import ml_collections

from fmjax.config import base_config, text_corpus_fields
from fmjax.errors import ConfigError

EXPERIMENTS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"
)


def _size(embed_dim: int, num_layers: int, num_heads: int, mlp_dim: int, head_dim: int, **more):
    """The fields of one Transformer size (plus `more`, e.g. the vocabulary)."""
    return dict(
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        mlp_dim=mlp_dim,
        **more,
    )


# The size of each family's Transformer: the fields a shape name sets, on top of the family's
# fields below. Columns: embed_dim, num_layers, num_heads, mlp_dim, head_dim.
SHAPES = {
    "bert": {
        # Trained on Shakespeare with its own 8192-token WordPiece (experiments/bert_tiny.py).
        "tiny": _size(256, 4, 4, 1024, 64, vocab_size=8192, max_seq_len=128),
        # BERT-Mini of Turc et al. 2019 ("Well-Read Students Learn Better").
        "mini": _size(256, 4, 4, 1024, 64, vocab_size=30522, max_seq_len=512),
        "base": _size(768, 12, 12, 3072, 64, vocab_size=30522, max_seq_len=512),
        "large": _size(1024, 24, 16, 4096, 64, vocab_size=30522, max_seq_len=512),
    },
    "gpt": {
        # Trained on Shakespeare with its own 4096-token byte-level BPE (experiments/gpt_tiny.py).
        "tiny": _size(256, 4, 4, 1024, 64, vocab_size=4096, max_seq_len=128),
        # GPT-2 small (124M). 50257 = GPT-2's vocabulary; tensor parallelism needs a multiple of
        # mesh.tensor (e.g. --config.model.vocab_size=50304, as nanoGPT pads it for speed).
        "small": _size(768, 12, 12, 3072, 64, vocab_size=50257, max_seq_len=1024),
    },
    "vit": {
        "tiny": _size(128, 4, 4, 256, 32, patch_size=4),
        "b16": _size(768, 12, 12, 3072, 64, patch_size=16),
    },
}

# The block fields every Transformer family shares (fmjax/models/transformer.py).
_BLOCK_FIELDS = dict(
    compute_dtype="auto",  # bfloat16 on GPU/TPU, float32 on CPU
    attention_backend="auto",  # auto | xla | cudnn (GPU) | splash (TPU); README, Accelerators
    remat="none",  # none | dots_with_no_batch_dims_saveable | dots_saveable | full (README)
    scan_layers=False,  # True: blocks stacked on a "layers" axis, one scan
)


def _family_model(family: str, shape: str, fields: dict, overrides: dict):
    if shape not in SHAPES[family]:
        raise ConfigError(f"unknown {family} shape {shape!r}; known: {sorted(SHAPES[family])}")
    model = ml_collections.ConfigDict(
        dict(family=family, **SHAPES[family][shape], **fields, **_BLOCK_FIELDS)
    )
    model.update(overrides)
    return model


def bert_model(shape: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    """BERT model fields (post-LN encoder) of a SHAPES["bert"] size, with overrides."""
    fields = dict(
        type_vocab_size=2,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        layer_norm_epsilon=1e-12,
        norm_position="post",  # BERT is post-LN; "pre" for GPT/ViT-style blocks
    )
    return _family_model("bert", shape, fields, overrides)


def gpt_model(shape: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    """GPT model fields (pre-LN decoder) of a SHAPES["gpt"] size, with overrides."""
    fields = dict(
        position_embedding="learned",  # "learned" | "rotary" (RoPE in every attention)
        tie_embeddings=True,  # output head = token embedding table (GPT-2); False: own head
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        layer_norm_epsilon=1e-5,
        norm_position="pre",
    )
    return _family_model("gpt", shape, fields, overrides)


def vit_model(shape: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    """ViT model fields of a SHAPES["vit"] size for 28x28 grey images in 10 classes, overridable."""
    fields = dict(
        image_size=28,
        num_channels=1,
        num_classes=10,
        pooling="gap",  # "cls": a learned class token | "gap": mean of the patch outputs
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        norm_position="pre",
    )
    return _family_model("vit", shape, fields, overrides)


def generate_config(**overrides) -> ml_collections.ConfigDict:
    """Sampling fields for --mode=generate (the gpt_* experiments' config.generate)."""
    generate = ml_collections.ConfigDict(
        dict(
            prompt="ROMEO:|First Citizen:\nWhat",  # several prompts are separated by "|"
            max_new_tokens=64,
            temperature=0.8,  # 0 = greedy (argmax)
            top_k=40,  # 0 = no top-k filtering
            top_p=0.95,  # 1.0 = no nucleus filtering
            seed=0,
            num_samples=1,  # continuations per prompt
        )
    )
    generate.update(overrides)
    return generate


def bert_pretraining_config(
    model: ml_collections.ConfigDict, corpus: str = "gcide"
) -> ml_collections.ConfigDict:
    """The BERT paper's recipe (phase 1, seq 128) around a model (bert_base, bert_large)."""
    config = base_config()
    config.model = model
    config.task = ml_collections.ConfigDict(dict(name="mlm", mask_prob=0.15, max_predictions=20))
    config.data.update(text_corpus_fields(corpus))
    config.data.seq_len = 128
    config.train.update(
        num_steps=1_000_000,
        batch_size=256,
        learning_rate=1e-4,
        warmup_steps=10_000,
        schedule="linear",
        weight_decay=0.01,
        grad_clip_norm=1.0,
        log_every=100,
        eval_every=10_000,
        eval_batches=20,
    )
    config.checkpoint.update(every_steps=5_000, keep=3)
    return config


def parse_preset(arg: str | None, experiment: str, **known) -> ml_collections.ConfigDict:
    """An experiment's `:preset` argument ("smoke,siglip" or "smoke,layers=2") as typed fields.

    `known` names every preset with its default: a bare name sets a boolean to True, `name=value`
    sets it to the default's type (big_vision's `config.py:arg` style). Anything else is a
    ConfigError naming the known presets.
    """
    presets = ml_collections.ConfigDict(known)
    for item in (part.strip() for part in (arg or "").split(",")):
        if not item:
            continue
        name, has_value, text = item.partition("=")
        if name not in known or (not has_value and not isinstance(known[name], bool)):
            names = ", ".join(
                f"{k}=<{type(v).__name__}>" if not isinstance(v, bool) else k
                for k, v in known.items()
            )
            raise ConfigError(
                f"unknown preset {item!r} for {experiment} (known: {names or 'none'}); "
                "presets are comma-separated"
            )
        presets[name] = _typed(text, known[name], name, experiment) if has_value else True
    return presets


def _typed(text: str, default, name: str, experiment: str):
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"preset {name}={text!r} for {experiment}: use true or false")
        return text.lower() == "true"
    try:
        return type(default)(text)
    except ValueError:
        raise ConfigError(
            f"preset {name}={text!r} for {experiment}: expected a {type(default).__name__}"
        ) from None


def load_experiment(name_or_path: str) -> types.ModuleType:
    """An experiment file as a module: a name in experiments/ ("bert_tiny") or a path to a .py."""
    path = name_or_path
    if os.sep not in path and not os.path.isfile(path):
        path = os.path.join(EXPERIMENTS_DIR, path if path.endswith(".py") else path + ".py")
    if not os.path.isfile(path):
        raise ConfigError(f"experiment file {path} not found; pass experiments/<name>.py")
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"fmjax_experiment_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_config(name_or_path: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """The config of an experiment file (see load_experiment) with a preset, e.g. "smoke"."""
    return load_experiment(name_or_path).get_config(preset)
