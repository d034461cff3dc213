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


def transformer_size(
    embed_dim: int, num_layers: int, num_heads: int, mlp_dim: int, head_dim: int, **more
) -> dict:
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
        "tiny": transformer_size(256, 4, 4, 1024, 64, vocab_size=8192, max_seq_len=128),
        # BERT-Mini of Turc et al. 2019 ("Well-Read Students Learn Better").
        "mini": transformer_size(256, 4, 4, 1024, 64, vocab_size=30522, max_seq_len=512),
        "base": transformer_size(768, 12, 12, 3072, 64, vocab_size=30522, max_seq_len=512),
        "large": transformer_size(1024, 24, 16, 4096, 64, vocab_size=30522, max_seq_len=512),
    },
    "gpt": {
        # Trained on Shakespeare with its own 4096-token byte-level BPE (experiments/gpt_tiny.py).
        "tiny": transformer_size(256, 4, 4, 1024, 64, vocab_size=4096, max_seq_len=128),
        # GPT-2 small (124M). 50257 = GPT-2's vocabulary; tensor parallelism needs a multiple of
        # mesh.tensor (e.g. --config.model.vocab_size=50304, as nanoGPT pads it for speed).
        "small": transformer_size(768, 12, 12, 3072, 64, vocab_size=50257, max_seq_len=1024),
    },
    "vit": {
        # 7x7 patches: 16 tokens per 28x28 image, about half the time per image of 4x4 patches
        # (49 tokens) here, so the 2-core budget of experiments/vit_tiny.py sees ~4 epochs.
        "tiny": transformer_size(128, 4, 4, 512, 32, patch_size=7),
        "b16": transformer_size(768, 12, 12, 3072, 64, patch_size=16),
    },
}

# The smoke presets' sizes (seconds on a CPU): pretraining runs, and the one-layer models of the
# fine-tuning, image and contrastive smoke runs.
SMOKE_SIZE = transformer_size(64, 2, 2, 128, 32)
ONE_LAYER_SMOKE_SIZE = transformer_size(32, 1, 2, 64, 16)

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
        kernel_init="xavier_uniform",  # the original ViT / big_vision init (attention.KERNEL_INITS)
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
    config.task = mlm_task()
    config.data.update(text_corpus_fields(corpus))
    config.data.seq_len = 128
    # base_config's optimizer is BERT's: AdamW 1e-4, linear warmup and decay, weight decay 0.01.
    train_schedule(config, 1_000_000, 256, warmup_steps=10_000, log_every=100, eval_every=10_000)
    config.train.eval_batches = 20
    config.checkpoint.every_steps = 5_000
    return config


def mlm_task() -> ml_collections.ConfigDict:
    """BERT's masked-LM task: 15% of the tokens, at most 20 predictions per sequence."""
    return ml_collections.ConfigDict(dict(name="mlm", mask_prob=0.15, max_predictions=20))


def causal_lm_task() -> ml_collections.ConfigDict:
    """GPT's next-token task (fmjax/tasks/causal_lm.py)."""
    return ml_collections.ConfigDict(dict(name="causal_lm"))


def cosine_adamw(learning_rate: float, weight_decay: float, adam_b2: float, **train) -> dict:
    """Train fields of AdamW (eps 1e-8) with warmup then cosine decay, the GPT-2, CLIP and ViT
    recipe (base_config's is BERT's: linear decay, eps 1e-6); `train`: more train fields
    (warmup_steps, end_learning_rate_factor)."""
    return dict(
        learning_rate=learning_rate,
        schedule="cosine",
        weight_decay=weight_decay,
        adam_b2=adam_b2,
        adam_eps=1e-8,
        **train,
    )


def shakespeare_pretraining_config(
    model: ml_collections.ConfigDict, task: ml_collections.ConfigDict, **train
) -> ml_collections.ConfigDict:
    """A tiny model's pretraining on the bundled Shakespeare at seq 128 (bert_tiny, gpt_tiny):
    small batches, many updates, a few CPU minutes; `train` sets the optimizer fields."""
    config = base_config()
    config.model = model
    config.task = task
    # shakespeare | gcide | tfds:<name> | files:<glob> (.txt .jsonl .jsonl.gz .parquet)
    config.data.update(text_corpus_fields("shakespeare"))
    config.data.seq_len = 128
    train_schedule(config, 600, 16, log_every=20, eval_every=200, eval_batches=16, **train)
    return config


def continued_pretraining_config(
    family: str, task: ml_collections.ConfigDict, smoke: bool, batch_size: int, **train
) -> ml_collections.ConfigDict:
    """Continued pretraining (domain adaptation) of whatever `family` model train.init_from
    points at, on a corpus: the model's fields and tokenizer come from that workdir. 1000 steps
    of `batch_size`, eval and checkpoint every 250 (`train` sets the optimizer fields); `smoke`:
    seconds."""
    config = base_config()
    config.model = ml_collections.ConfigDict(
        dict(family=family, fields_from_init=True, compute_dtype="auto")
    )
    config.task = task
    config.data.corpus = "shakespeare"  # shakespeare | gcide | tfds:<name>: the new domain
    config.data.source_dir = ""
    config.data.seq_len = 128  # at most the pretrained model's max_seq_len
    config.data.tokenizer_file = ""  # '' = the tokenizer of train.init_from's run
    config.train.init_from = ""  # the pretrained workdir (required)
    train_schedule(config, 1000, batch_size, log_every=20, eval_every=250, eval_batches=8, **train)
    if smoke:
        config.data.seq_len = 32
        train_schedule(
            config, 4, 8, learning_rate=1e-3, warmup_steps=1, log_every=2, eval_batches=1
        )
    return config


def text_classification_config(
    model: ml_collections.ConfigDict, dataset: str, seq_len: int, init_from: str
) -> ml_collections.ConfigDict:
    """Fine-tuning `model` from the workdir `init_from` on the labeled texts `dataset`: the task
    and data fields every text-classification experiment shares."""
    config = base_config()
    config.model = model
    config.task = ml_collections.ConfigDict(dict(name="text_classification", label_smoothing=0.0))
    config.data.dataset = dataset  # files:/path/train.csv | rotten_tomatoes | wordnet_supersenses
    config.data.source_dir = ""  # bundled sets: an existing copy of the raw files (skips the fetch)
    config.data.seq_len = seq_len
    config.data.tokenizer_file = ""  # a tokenizer.json; '' = the one of train.init_from's run
    config.data.tokenizer_from = ""  # a workdir whose tokenizer to use (the scratch baseline's)
    config.train.init_from = init_from
    return config


def from_scratch(config: ml_collections.ConfigDict, pretrained: str) -> None:
    """A fine-tuning experiment's "scratch" preset: the same model, tokenizer (`pretrained`'s)
    and budget from a random init, which shows what pretraining buys."""
    config.train.init_from = ""
    config.data.tokenizer_from = pretrained
    config.train.learning_rate = 5e-4  # random init tolerates (and needs) a larger step


def smoke_classifier(config: ml_collections.ConfigDict, eval_every: int) -> None:
    """A classifier fine-tuning experiment's "smoke" preset: a one-layer model from a random
    init (the tests set train.init_from), 8 steps, eval and checkpoint every `eval_every`."""
    config.model.update(ONE_LAYER_SMOKE_SIZE, vocab_size=512)
    config.data.seq_len = 32
    config.data.tokenizer_from = ""
    config.train.init_from = ""
    train_schedule(
        config, 8, 16, learning_rate=3e-3, warmup_steps=1, log_every=2, eval_every=eval_every
    )


def train_schedule(
    config: ml_collections.ConfigDict,
    num_steps: int,
    batch_size: int,
    checkpoint_every: int | None = None,
    **train,
) -> None:
    """A run's budget: `num_steps` of `batch_size` (`train`: other train fields), evaluated at
    the last step unless train.eval_every is given, checkpointed at every eval unless
    `checkpoint_every` is given."""
    config.train.update(dict(num_steps=num_steps, batch_size=batch_size, eval_every=num_steps))
    config.train.update(train)
    config.checkpoint.every_steps = checkpoint_every or int(config.train.eval_every)


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
