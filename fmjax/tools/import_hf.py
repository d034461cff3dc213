"""Import a Hugging Face BERT / GPT-2 directory (safetensors only) as an fmjax workdir.

python -m fmjax.tools.import_hf --hf_dir DIR --workdir runs/imported [--config experiments/X.py]
python -m fmjax.main --config runs/imported/experiment.py --workdir runs/imported   # go on training

Reads a directory as a published model ships it: DIR/config.json, DIR/model.safetensors (or the
shards of model.safetensors.index.json) and the tokenizer: tokenizer.json, or vocab.txt (BERT)
or vocab.json + merges.txt (GPT-2), with tokenizer_config.json's do_lower_case / strip_accents /
tokenize_chinese_chars honored. BERT weights may come from BertForMaskedLM, BertModel,
BertForPreTraining or BertForSequenceClassification (heads fmjax has no place for are listed as
not imported; a missing MLM head is freshly initialized). Never a pickle (pytorch_model.bin,
*.pt, *.ckpt): those are refused with the command that converts them. Special-token ids are
the tokenizer's own (published BERT: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103). The
model fields come from the HF config, everything else (task, data, train, mesh) from the
experiment file (default experiments/bert_tiny.py or gpt_tiny.py). The workdir gets what a
training run leaves, at step 0:
  checkpoints/0/          Orbax: the HF weights as params, a freshly initialized optimizer state
  tokenizer.json          the model's tokenizer; data.tokenizer_file points at it, so continued
                          pretraining packs the corpus with it instead of training a new one
  config.json, manifest.json   the resolved config and provenance, as fmjax.main writes them
  imported_config.json, experiment.py   that config as an experiment file for fmjax.main
  import.json             where the weights came from (files, sha256, HF model type, special ids)
  hf_tokenizer/           the original tokenizer files, which export_hf ships with any run that
                          descends from this one (train.init_from)
"""

from __future__ import annotations

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers

from fmjax.config import resolve_auto_fields, write_snapshot
from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import sha256_file
from fmjax.errors import ConfigError
from fmjax.experiments import EXPERIMENTS_DIR, load_experiment
from fmjax.models import model_settings
from fmjax.params_io import stacked_layers
from fmjax.tools.hf_weights import from_hf, normalize_names, weights_of
from fmjax.tools.workdir import abstract_params, inference_config, run_cli, tool_parser

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")
DEFAULT_EXPERIMENTS = {"bert": "bert_tiny.py", "gpt": "gpt_tiny.py", "vit": "vit_tiny.py"}
# transformers activation names -> fmjax model.mlp_activation
FMJAX_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}

EXPERIMENT_FILE = '''"""Experiment of a model imported by fmjax.tools.import_hf.

The config is imported_config.json next to this file:
python -m fmjax.main --config {workdir}/experiment.py --workdir {workdir}
"""

import json
import os

import ml_collections


def get_config(preset=None):
    if preset:
        raise ValueError(f"unknown preset {{preset!r}}: an imported model's experiment has none")
    workdir = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(workdir, "imported_config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if os.path.exists(os.path.join(workdir, "tokenizer.json")):  # follows a moved workdir
        config.data.tokenizer_file = os.path.join(workdir, "tokenizer.json")
    return config
'''


# --- reading the HF directory ------------------------------------------------------------------


def weight_files(hf_dir: str) -> list[str]:
    """The safetensors files of an HF directory; ConfigError for pickle-only or empty ones."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [shard for shard in shards if not os.path.exists(os.path.join(hf_dir, shard))]
        if missing:
            raise ConfigError(
                f"{hf_dir}/model.safetensors.index.json names {missing[0]}, which is missing; "
                "download every shard"
            )
        return [os.path.join(hf_dir, shard) for shard in shards]
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    pickles = sorted(
        os.path.basename(path)
        for path in glob.glob(os.path.join(hf_dir, "*"))
        if path.endswith(PICKLE_SUFFIXES)
    )
    if pickles:
        architecture = (
            _read_json(os.path.join(hf_dir, "config.json")).get("architectures") or ["AutoModel"]
        )[0]
        raise ConfigError(
            f"{hf_dir} has only {', '.join(pickles)}: pickle-based weights can run code when "
            "loaded, and fmjax reads safetensors only; convert them where you trust the file: "
            f'python -c "import transformers; transformers.{architecture}.from_pretrained('
            f"'{hf_dir}').save_pretrained('{hf_dir}', safe_serialization=True)\""
        )
    raise ConfigError(f"{hf_dir} has no model.safetensors; is it a transformers model directory?")


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_hf_dir(hf_dir: str) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(config.json as a dict, all tensors as float32 numpy arrays, the weight files read)."""
    import safetensors.numpy

    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"{hf_dir} has no config.json; is it a transformers model directory?")
    files = weight_files(hf_dir)  # refuses pickle before anything else is read
    with open(config_path) as f:
        hf_config = json.load(f)
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        for name, value in safetensors.numpy.load_file(path).items():
            tensors[name] = np.asarray(value, np.float32)
    return hf_config, tensors, files


def read_tokenizer(hf_dir: str) -> tokenizers.Tokenizer:
    """The model's tokenizer as transformers' fast tokenizer would build it: DIR/tokenizer.json,
    else a WordPiece from vocab.txt or a byte-level BPE from vocab.json + merges.txt; the
    BERT settings of tokenizer_config.json (do_lower_case, strip_accents,
    tokenize_chinese_chars) override tokenizer.json's normalizer, as transformers does."""
    settings = _read_json(os.path.join(hf_dir, "tokenizer_config.json"))
    path = os.path.join(hf_dir, "tokenizer.json")
    if os.path.exists(path):
        tok = tokenizers.Tokenizer.from_file(path)
        normalizer = json.loads(tok.to_str()).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            tok.normalizer = _bert_normalizer(settings, normalizer)
        return tok
    if os.path.exists(os.path.join(hf_dir, "vocab.txt")):
        return wordpiece_from_vocab(os.path.join(hf_dir, "vocab.txt"), settings)
    vocab, merges = os.path.join(hf_dir, "vocab.json"), os.path.join(hf_dir, "merges.txt")
    if os.path.exists(vocab) and os.path.exists(merges):
        tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
            add_prefix_space=bool(settings.get("add_prefix_space", False))
        )
        tok.decoder = tokenizers.decoders.ByteLevel()
        tok.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
        if tok.token_to_id(tokenizer_lib.END_OF_TEXT) is not None:
            tok.add_special_tokens([tokenizer_lib.END_OF_TEXT])
        return tok
    raise ConfigError(
        f"{hf_dir} has no tokenizer.json, vocab.txt or vocab.json + merges.txt; download the "
        "model's tokenizer files too"
    )


def _bert_normalizer(settings: dict, current: dict | None = None):
    current = current or {}

    def setting(name: str, normalizer_name: str, default):
        return settings.get(name, current.get(normalizer_name, default))

    return tokenizers.normalizers.BertNormalizer(
        clean_text=bool(current.get("clean_text", True)),
        handle_chinese_chars=bool(setting("tokenize_chinese_chars", "handle_chinese_chars", True)),
        strip_accents=setting("strip_accents", "strip_accents", None),
        lowercase=bool(setting("do_lower_case", "lowercase", True)),
    )


def wordpiece_from_vocab(vocab_path: str, settings: dict | None = None) -> tokenizers.Tokenizer:
    """A BERT WordPiece tokenizer from a vocab.txt (one token a line, the line number its id),
    configured as transformers' BertTokenizerFast: BERT normalizer (lowercase, accents and CJK
    spacing per tokenizer_config.json), BERT pre-tokenizer, `[CLS] a [SEP] b [SEP]` template."""
    settings = settings or {}
    unk = settings.get("unk_token", tokenizer_lib.UNK)
    unk = unk.get("content", tokenizer_lib.UNK) if isinstance(unk, dict) else unk
    model = tokenizers.models.WordPiece.from_file(
        vocab_path, unk_token=unk, max_input_chars_per_word=100
    )
    tok = tokenizers.Tokenizer(model)
    tok.normalizer = _bert_normalizer(settings)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")
    special = tokenizer_lib.wordpiece_special_ids(tok, vocab_path)
    cls, sep = tokenizer_lib.CLS, tokenizer_lib.SEP
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, special.cls), (sep, special.sep)],
    )
    tok.add_special_tokens(list(tokenizer_lib.WORDPIECE_SPECIAL_TOKENS))
    return tok


# --- HF config -> fmjax model config --------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def fmjax_model_fields(hf_config: dict) -> dict:
    """fmjax model fields of an HF BERT / GPT-2 config; ConfigError naming what does not fit."""
    model_type = hf_config.get("model_type")
    if model_type == "bert":
        _require(
            hf_config.get("hidden_act", "gelu") == "gelu",
            f"hidden_act={hf_config.get('hidden_act')!r}: fmjax BERT uses exact GELU ('gelu')",
        )
        _require(
            hf_config.get("position_embedding_type", "absolute") == "absolute",
            f"position_embedding_type={hf_config.get('position_embedding_type')!r}: "
            "fmjax BERT has absolute learned positions",
        )
        _require(not hf_config.get("is_decoder"), "is_decoder=true: fmjax BERT is an encoder")
        _require(not hf_config.get("add_cross_attention"), "add_cross_attention=true: unsupported")
        hidden, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
        return dict(
            family="bert",
            vocab_size=int(hf_config["vocab_size"]),
            embed_dim=hidden,
            num_layers=int(hf_config["num_hidden_layers"]),
            num_heads=heads,
            head_dim=hidden // heads,
            mlp_dim=int(hf_config["intermediate_size"]),
            max_seq_len=int(hf_config["max_position_embeddings"]),
            type_vocab_size=int(hf_config.get("type_vocab_size", 2)),
            dropout_rate=float(hf_config.get("hidden_dropout_prob", 0.1)),
            attention_dropout_rate=float(hf_config.get("attention_probs_dropout_prob", 0.1)),
            layer_norm_epsilon=float(hf_config.get("layer_norm_eps", 1e-12)),
            norm_position="post",
            mlp_activation="gelu",
        )
    if model_type == "gpt2":
        activation = hf_config.get("activation_function", "gelu_new")
        _require(
            activation in FMJAX_ACTIVATIONS,
            f"activation_function={activation!r}: fmjax supports {sorted(FMJAX_ACTIVATIONS)}",
        )
        _require(
            hf_config.get("scale_attn_weights", True),
            "scale_attn_weights=false: fmjax always scales attention scores by 1/sqrt(head_dim)",
        )
        _require(
            not hf_config.get("scale_attn_by_inverse_layer_idx", False),
            "scale_attn_by_inverse_layer_idx=true: fmjax has no per-layer attention scaling",
        )
        _require(not hf_config.get("add_cross_attention"), "add_cross_attention=true: unsupported")
        hidden, heads = int(hf_config["n_embd"]), int(hf_config["n_head"])
        return dict(
            family="gpt",
            vocab_size=int(hf_config["vocab_size"]),
            embed_dim=hidden,
            num_layers=int(hf_config["n_layer"]),
            num_heads=heads,
            head_dim=hidden // heads,
            mlp_dim=int(hf_config.get("n_inner") or 4 * hidden),
            max_seq_len=int(hf_config["n_positions"]),
            position_embedding="learned",
            tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
            # fmjax has one dropout rate for embeddings and residuals: GPT-2's resid_pdrop.
            dropout_rate=float(hf_config.get("resid_pdrop", 0.1)),
            attention_dropout_rate=float(hf_config.get("attn_pdrop", 0.1)),
            layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-5)),
            norm_position="pre",
            mlp_activation=FMJAX_ACTIVATIONS[activation],
        )
    if model_type == "vit":
        _require(
            hf_config.get("hidden_act", "gelu") == "gelu",
            f"hidden_act={hf_config.get('hidden_act')!r}: fmjax ViT uses exact GELU ('gelu')",
        )
        _require(hf_config.get("qkv_bias", True), "qkv_bias=false: fmjax ViT has qkv biases")
        hidden, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
        labels = hf_config.get("id2label") or {}
        return dict(
            family="vit",
            image_size=int(hf_config["image_size"]),
            patch_size=int(hf_config["patch_size"]),
            num_channels=int(hf_config.get("num_channels", 3)),
            num_classes=int(hf_config.get("num_labels") or len(labels) or 2),
            embed_dim=hidden,
            num_layers=int(hf_config["num_hidden_layers"]),
            num_heads=heads,
            head_dim=hidden // heads,
            mlp_dim=int(hf_config["intermediate_size"]),
            pooling="cls",  # HF ViT classifies the class token's output
            position_embedding="learned",  # HF ViT's table (vit_tiny itself uses sincos2d)
            dropout_rate=float(hf_config.get("hidden_dropout_prob", 0.0)),
            attention_dropout_rate=float(hf_config.get("attention_probs_dropout_prob", 0.0)),
            layer_norm_epsilon=float(hf_config.get("layer_norm_eps", 1e-12)),
            norm_position="pre",
            mlp_activation="gelu",
        )
    if model_type in ("clip", "siglip"):
        from fmjax.tools.export_hf import CLIP_MISMATCH

        raise ConfigError(f"model_type={model_type!r}: {CLIP_MISMATCH}")
    raise ConfigError(f"model_type={model_type!r}: import_hf supports 'bert', 'gpt2' and 'vit'")


def fmjax_config(
    hf_config: dict,
    experiment: str | None = None,
    *,
    pad_vocab_multiple: int = 1,
    compute_dtype: str = "auto",
) -> ml_collections.ConfigDict:
    """The experiment's config (task, data, train, ...) with the model fields of `hf_config`."""
    fields = fmjax_model_fields(hf_config)
    multiple = max(int(pad_vocab_multiple), 1)
    if "vocab_size" in fields:
        fields["vocab_size"] = math.ceil(fields["vocab_size"] / multiple) * multiple
    if experiment is None:
        experiment = os.path.join(EXPERIMENTS_DIR, DEFAULT_EXPERIMENTS[fields["family"]])
    path, _, preset = experiment.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"experiment file {path} not found; pass --config experiments/X.py")
    config = load_experiment(path).get_config(preset or None)
    if config.model.get("family") != fields["family"]:
        raise ConfigError(
            f"{path} is a {config.model.get('family')!r} experiment but the HF model is "
            f"{fields['family']!r}; pass a matching --config"
        )
    config.model.update(fields)
    config.model.compute_dtype = compute_dtype
    if "seq_len" in config.data and "max_seq_len" in fields:
        config.data.seq_len = min(int(config.data.seq_len), fields["max_seq_len"])
    resolve_auto_fields(config, jax.default_backend())
    return config


# --- HF tensors -> fmjax params ---------------------------------------------------------------


def params_from_hf(
    tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict
) -> tuple[dict, list[str]]:
    """fmjax params of `model` (blocks unrolled) from transformers tensors, and the tensors
    left unused."""
    model = inference_config(model)
    _, target = abstract_params(model)
    tensors = normalize_names(tensors, model.family)
    return from_hf(tensors, weights_of(model), target, lambda: _fresh_params(model))


def _fresh_params(model: ml_collections.ConfigDict) -> dict:
    from flax import nnx

    from fmjax.models import build_model

    with nnx.use_eager_sharding(False):
        built = build_model(model, nnx.Rngs(0))
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(built, nnx.Param)))


# --- writing the workdir ------------------------------------------------------------------------


def write_workdir(
    workdir: str,
    config: ml_collections.ConfigDict,
    params: dict,
    tokenizer: tokenizers.Tokenizer | None,
    record: dict | None = None,
) -> None:
    """An fmjax workdir at step 0: checkpoint (params + fresh optimizer state), tokenizer (none
    for an image model), config snapshot, manifest and an experiment file, so fmjax.main can
    train from it.

    `params` has the blocks unrolled (layers/0, ...); they are stacked for scan_layers runs.
    """
    from fmjax.train.checkpoint import Checkpointer
    from fmjax.train.optim import make_optimizer

    workdir = os.path.abspath(workdir)
    if os.path.isdir(os.path.join(workdir, "checkpoints")) or os.path.exists(
        os.path.join(workdir, "config.json")
    ):
        raise ConfigError(f"{workdir} already holds a run; import into a new --workdir")
    os.makedirs(workdir, exist_ok=True)
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    data_fingerprint: dict = {"imported_from": record or {}}
    position: dict = {"step": 0, "skipped_steps": 0}
    if tokenizer is not None:
        tokenizer_path = os.path.join(workdir, "tokenizer.json")
        tokenizer.save(tokenizer_path)
        position["tokenizer_sha256"] = sha256_file(tokenizer_path)
        config.data.tokenizer_file = tokenizer_path
        data_fingerprint["tokenizer"] = {
            "path": tokenizer_path,
            "sha256": position["tokenizer_sha256"],
            "kind": type(tokenizer.model).__name__.lower(),
            "vocab_size": tokenizer.get_vocab_size(),
        }
    with open(os.path.join(workdir, "imported_config.json"), "w") as f:
        f.write(config.to_json(indent=2, sort_keys=True) + "\n")
    with open(os.path.join(workdir, "experiment.py"), "w") as f:
        f.write(EXPERIMENT_FILE.format(workdir=workdir))
    write_snapshot(config, workdir, data_fingerprint)
    if record is not None:
        with open(os.path.join(workdir, "import.json"), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
    if model_settings(config.model).scan_layers:
        params = stacked_layers(params)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = {
        "step": jnp.int32(0),
        "params": params,
        "opt_state": make_optimizer(config.train).init(params),
    }
    checkpoints = Checkpointer(
        workdir, int(config.checkpoint.every_steps), int(config.checkpoint.keep), async_save=False
    )
    checkpoints.save(0, state, position, force=True)
    checkpoints.close()


# The tokenizer files a published model ships; copied so that an export of any run that
# descends from the import ships them again (fmjax/tools/export_hf.py).
ORIGINAL_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
ORIGINAL_TOKENIZER_DIR = "hf_tokenizer"


def special_ids(tokenizer: tokenizers.Tokenizer, family: str) -> dict[str, int]:
    """The special-token ids the data pipeline will use with this tokenizer (ConfigError if
    one is missing)."""
    if family == "bert":
        ids = tokenizer_lib.wordpiece_special_ids(tokenizer)
        return dict(zip(tokenizer_lib.WORDPIECE_SPECIAL_TOKENS, ids.all(), strict=True))
    return {tokenizer_lib.END_OF_TEXT: tokenizer_lib.end_of_text_id(tokenizer)}


def copy_original_tokenizer(hf_dir: str, workdir: str) -> list[str]:
    """Copies the model's own tokenizer files into WORKDIR/hf_tokenizer; the names copied."""
    import shutil

    target = os.path.join(workdir, ORIGINAL_TOKENIZER_DIR)
    names = [n for n in ORIGINAL_TOKENIZER_FILES if os.path.exists(os.path.join(hf_dir, n))]
    os.makedirs(target, exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(target, name))
    return names


def _record(hf_dir: str, hf_config: dict, files: list[str]) -> dict:
    return {
        "hf_dir": os.path.abspath(hf_dir),
        "model_type": hf_config.get("model_type"),
        "architectures": hf_config.get("architectures"),
        "transformers_version": hf_config.get("transformers_version"),
        "weight_files": {os.path.basename(p): sha256_file(p) for p in files},
    }


def import_hf(
    hf_dir: str,
    workdir: str,
    experiment: str | None = None,
    *,
    pad_vocab_multiple: int = 1,
    compute_dtype: str = "auto",
) -> ml_collections.ConfigDict:
    """Reads an HF BERT / GPT-2 / ViT directory and writes it as an fmjax workdir at step 0."""
    try:
        import safetensors  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"import_hf needs safetensors ({error}): pip install -e '.[hf]'"
        ) from None
    hf_config, tensors, files = read_hf_dir(hf_dir)
    config = fmjax_config(
        hf_config, experiment, pad_vocab_multiple=pad_vocab_multiple, compute_dtype=compute_dtype
    )
    if config.model.family == "vit":
        params, unused = params_from_hf(tensors, config.model)
        record = {**_record(hf_dir, hf_config, files), "unused_tensors": unused}
        write_workdir(workdir, config, params, None, record)
        return config
    tokenizer = read_tokenizer(hf_dir)
    if tokenizer.get_vocab_size() > config.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens > vocab_size="
            f"{config.model.vocab_size} of {hf_dir}/config.json"
        )
    params, unused = params_from_hf(tensors, config.model)
    record = {
        **_record(hf_dir, hf_config, files),
        "unused_tensors": unused,
        "vocab_size": int(hf_config["vocab_size"]),
        "special_ids": special_ids(tokenizer, config.model.family),
    }
    tokenizer_lib.check_ids_fit(
        tuple(record["special_ids"].values()), int(config.model.vocab_size), hf_dir
    )
    write_workdir(workdir, config, params, tokenizer, record)
    record["original_tokenizer_files"] = copy_original_tokenizer(hf_dir, workdir)
    with open(os.path.join(os.path.abspath(workdir), "import.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return config


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("fmjax.tools.import_hf", __doc__)
    parser.add_argument("--hf_dir", required=True, help="transformers model directory")
    parser.add_argument("--workdir", required=True, help="new fmjax workdir to write")
    parser.add_argument(
        "--config",
        default=None,
        help="experiment file[:preset] for task/data/train (default bert_tiny.py / gpt_tiny.py)",
    )
    parser.add_argument(
        "--pad_vocab_multiple",
        type=int,
        default=1,
        help="round the vocabulary up to a multiple (e.g. 128 to shard it over `tensor`)",
    )
    parser.add_argument(
        "--compute_dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="model.compute_dtype of the run (auto: bfloat16 on GPU/TPU, float32 on CPU, here)",
    )
    args = parser.parse_args(argv)
    config = run_cli(
        import_hf,
        args.hf_dir,
        args.workdir,
        args.config,
        pad_vocab_multiple=args.pad_vocab_multiple,
        compute_dtype=args.compute_dtype,
    )
    workdir = os.path.abspath(args.workdir)
    with open(os.path.join(workdir, "import.json")) as f:
        record = json.load(f)
    if record["unused_tensors"]:
        print(f"fmjax: not imported (no fmjax counterpart): {', '.join(record['unused_tensors'])}")
    if record.get("special_ids"):
        ids = ", ".join(f"{token}={token_id}" for token, token_id in record["special_ids"].items())
        print(f"fmjax: special tokens (the data pipeline uses these ids): {ids}")
    print(
        f"fmjax: wrote {workdir} ({config.model.family}, step 0). Continue pretraining with\n"
        f"  python -m fmjax.main --config {workdir}/experiment.py --workdir {workdir}"
    )


if __name__ == "__main__":
    main()
