"""Export an fmjax BERT, BERT classifier, GPT or ViT run as a `transformers` model directory.

python -m fmjax.tools.export_hf --workdir runs/gpt_tiny --out runs/gpt_tiny/hf

writes config.json, model.safetensors and the tokenizer (tokenizer.json + tokenizer_config.json)
so that `transformers.AutoModelForMaskedLM` (BERT -> BertForMaskedLM),
`AutoModelForSequenceClassification` (bert_classifier with model.pooler ->
BertForSequenceClassification, labels named as in the run's data), `AutoModelForCausalLM`
(GPT -> GPT2LMHeadModel) or `AutoModelForImageClassification` (ViT with a class token ->
ViTForImageClassification, no tokenizer) and `AutoTokenizer` load it with `from_pretrained(DIR)`.
A run that descends from fmjax.tools.import_hf ships the published model's own tokenizer files
(vocab.txt, tokenizer_config.json, ...). A run whose architecture `transformers` cannot express
(rotary positions, no attention biases, pre-LN BERT, num_heads * head_dim != embed_dim, a
mean-pooled ViT, the contrastive model vs CLIPModel) is refused with one line naming why.

Vocabulary padding: `model.vocab_size` may be larger than the tokenizer (padded to shard over
`tensor`, e.g. 50257 -> 50304). Only the tokenizer's rows are exported (HF `vocab_size` = the
tokenizer's size); the padding rows are never inputs or targets, so the logits of every real
token are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import tokenizers

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.errors import ConfigError
from fmjax.models import model_settings
from fmjax.tools.hf_weights import to_hf, weights_of
from fmjax.tools.workdir import load_run, run_cli, tool_parser

# Why fmjax's contrastive model neither exports to nor imports from transformers' CLIPModel.
CLIP_MISMATCH = (
    "CLIPModel's architecture differs from fmjax's contrastive model (CLIP's text tower is "
    "causal and pools the end-of-text token, both towers use quick-GELU, the vision tower has a "
    "LayerNorm before its encoder and no patch bias), so no weight map keeps the logits; "
    "fmjax exchanges BERT, GPT-2 and ViT only"
)
# fmjax model.mlp_activation <-> transformers activation names (gelu_new = GPT-2's tanh GELU).
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


def check_exportable(model: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first model field `transformers` cannot express."""
    family = model.family
    if family == "contrastive":
        raise ConfigError(CLIP_MISMATCH)
    if family not in ("bert", "bert_classifier", "gpt", "vit"):
        raise ConfigError(
            f"model.family={family!r}: export_hf supports 'bert', 'bert_classifier', 'gpt' and "
            "'vit'"
        )
    settings = model_settings(model)
    if family == "bert_classifier" and not settings.pooler:
        raise ConfigError(
            "model.pooler=False: BertForSequenceClassification always applies BERT's tanh "
            "pooler to [CLS]; fine-tune with --config.model.pooler=True to export"
        )
    if model.num_heads * model.head_dim != model.embed_dim:
        raise ConfigError(
            f"model.head_dim={model.head_dim}: transformers needs num_heads * head_dim == "
            f"embed_dim ({model.num_heads} * {model.head_dim} != {model.embed_dim})"
        )
    if not settings.use_bias:
        raise ConfigError("model.use_bias=False: BERT and GPT-2 attention layers have biases")
    activation = settings.mlp_activation
    if family == "vit":
        if settings.pooling != "cls":
            raise ConfigError(
                f"model.pooling={settings.pooling!r}: ViTForImageClassification classifies "
                "the class token; only pooling='cls' runs can be exported"
            )
        if activation != "gelu":
            raise ConfigError(f"model.mlp_activation={activation!r}: HF ViT uses exact GELU")
        if model.get("position_embedding", "learned") != "learned":
            raise ConfigError(
                f"model.position_embedding={model.position_embedding!r}: HF ViT has a learned "
                "position table; only position_embedding='learned' runs can be exported"
            )
        return
    if family in ("bert", "bert_classifier"):
        if model.norm_position != "post":
            raise ConfigError(f"model.norm_position={model.norm_position!r}: BERT is post-LN")
        if activation != "gelu":
            raise ConfigError(
                f"model.mlp_activation={activation!r}: fmjax's BERT MLM head uses exact GELU, "
                "so BertConfig.hidden_act can only be 'gelu'"
            )
    else:
        if settings.position_embedding != "learned":
            raise ConfigError(
                f"model.position_embedding={model.position_embedding!r}: GPT-2 has learned "
                "absolute positions; only 'learned' runs can be exported"
            )
        if activation not in HF_ACTIVATIONS:
            raise ConfigError(f"model.mlp_activation={activation!r} has no GPT-2 equivalent")


def hf_config(
    model: ml_collections.ConfigDict,
    vocab_size: int,
    tokenizer: tokenizers.Tokenizer | None = None,
    class_names: list[str] | None = None,
):
    """The transformers BertConfig / GPT2Config of an exportable fmjax model config; the special
    ids are those of `tokenizer` (fmjax's own when None); a classifier's labels are named
    `class_names`."""
    import transformers

    check_exportable(model)
    settings = model_settings(model)
    # BertConfig and ViTConfig name an encoder's fields alike.
    encoder = dict(
        hidden_size=model.embed_dim,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim,
        hidden_act="gelu",
        hidden_dropout_prob=model.dropout_rate,
        attention_probs_dropout_prob=model.attention_dropout_rate,
        layer_norm_eps=model.layer_norm_epsilon,
    )
    if model.family in ("vit", "bert_classifier"):
        names = class_names or [str(i) for i in range(int(model.num_classes))]
        labels = dict(
            num_labels=int(model.num_classes),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
        )
    if model.family == "vit":
        return transformers.ViTConfig(
            architectures=["ViTForImageClassification"],
            **encoder,
            image_size=model.image_size,
            patch_size=model.patch_size,
            num_channels=model.num_channels,
            qkv_bias=True,
            **labels,
        )
    if model.family in ("bert", "bert_classifier"):
        ids = tokenizer_lib.wordpiece_special_ids(tokenizer) if tokenizer else None
        pad_id = ids.pad if ids else tokenizer_lib.PAD_ID
        classes = {}
        if model.family == "bert_classifier":
            classes = dict(
                **labels,
                classifier_dropout=(
                    model.dropout_rate
                    if settings.classifier_dropout_rate is None
                    else settings.classifier_dropout_rate
                ),
            )
        return transformers.BertConfig(
            architectures=[
                "BertForMaskedLM" if model.family == "bert" else "BertForSequenceClassification"
            ],
            **classes,
            vocab_size=vocab_size,
            **encoder,
            max_position_embeddings=model.max_seq_len,
            type_vocab_size=model.type_vocab_size,
            pad_token_id=pad_id,
            tie_word_embeddings=True,
        )
    eot = tokenizer_lib.end_of_text_id(tokenizer) if tokenizer else tokenizer_lib.END_OF_TEXT_ID
    return transformers.GPT2Config(
        architectures=["GPT2LMHeadModel"],
        vocab_size=vocab_size,
        n_positions=model.max_seq_len,
        n_embd=model.embed_dim,
        n_layer=model.num_layers,
        n_head=model.num_heads,
        n_inner=model.mlp_dim,
        activation_function=HF_ACTIVATIONS[settings.mlp_activation],
        resid_pdrop=model.dropout_rate,
        embd_pdrop=model.dropout_rate,
        attn_pdrop=model.attention_dropout_rate,
        layer_norm_epsilon=model.layer_norm_epsilon,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=bool(model.tie_embeddings),
    )


def hf_tokenizer(tokenizer: tokenizers.Tokenizer, family: str, max_length: int):
    """The run's HF `tokenizers` tokenizer as a transformers PreTrainedTokenizerFast."""
    import transformers

    if family in ("bert", "bert_classifier"):
        special = dict(
            unk_token=tokenizer_lib.UNK,
            sep_token=tokenizer_lib.SEP,
            pad_token=tokenizer_lib.PAD,
            cls_token=tokenizer_lib.CLS,
            mask_token=tokenizer_lib.MASK,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    else:
        eot = tokenizer_lib.END_OF_TEXT
        # No token_type_ids: GPT2LMHeadModel would add their (token) embeddings to the input.
        special = dict(
            bos_token=eot,
            eos_token=eot,
            unk_token=eot,
            model_input_names=["input_ids", "attention_mask"],
        )
    copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # HF sets padding/truncation on it
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=copy, model_max_length=max_length, **special
    )


def _portable_tokenizer_class(path: str) -> None:
    """transformers 5 names its class TokenizersBackend; 4.x and 5.x both read this name."""
    with open(path) as f:
        settings = json.load(f)
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)


def copy_original_tokenizer_files(tokenizer_path: str, out: str) -> list[str]:
    """For a run that descends from fmjax.tools.import_hf: the published model's own tokenizer
    files (vocab.txt, tokenizer_config.json, ...) kept next to its tokenizer.json, copied over
    the generated ones so the export ships the original tokenizer. The names copied."""
    from fmjax.tools.import_hf import ORIGINAL_TOKENIZER_DIR

    source = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), ORIGINAL_TOKENIZER_DIR)
    if not os.path.isdir(source):
        return []
    names = sorted(os.listdir(source))
    for name in names:
        shutil.copyfile(os.path.join(source, name), os.path.join(out, name))
    return names


def export(workdir: str, out: str) -> str:
    """Writes the latest checkpoint of `workdir` as a transformers model directory `out`."""
    from fmjax.tools.workdir import read_config, read_json

    try:
        import safetensors.numpy
        import transformers  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"export_hf needs the hf extras ({error}): pip install -e '.[hf]'"
        ) from None
    model = read_config(workdir).model
    check_exportable(model)  # before restoring anything
    text = model.family != "vit"
    run = load_run(workdir, with_tokenizer=text)
    vocab_size = run.tokenizer.get_vocab_size() if text else None
    if text and vocab_size > model.vocab_size:
        raise ConfigError(
            f"tokenizer {run.tokenizer_path} has {vocab_size} tokens > model.vocab_size="
            f"{model.vocab_size}"
        )
    tensors = to_hf(run.params, weights_of(model), vocab_size)
    os.makedirs(out, exist_ok=True)
    manifest = read_json(os.path.join(workdir, "manifest.json"))
    class_names = (manifest.get("data") or {}).get("class_names")
    hf_config(model, vocab_size, run.tokenizer, class_names).save_pretrained(out)
    safetensors.numpy.save_file(
        tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"}
    )
    original = []
    if text:
        hf_tokenizer(run.tokenizer, model.family, int(model.max_seq_len)).save_pretrained(out)
        _portable_tokenizer_class(os.path.join(out, "tokenizer_config.json"))
        original = copy_original_tokenizer_files(run.tokenizer_path, out)
    with open(os.path.join(out, "fmjax_export.json"), "w") as f:
        json.dump(
            {
                "workdir": os.path.abspath(workdir),
                "step": run.step,
                "model": model.to_dict(),
                "original_tokenizer_files": original,
            },
            f,
            indent=2,
            sort_keys=True,
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("fmjax.tools.export_hf", __doc__, "fmjax run directory (BERT or GPT)")
    parser.add_argument("--out", required=True, help="directory to write the HF model into")
    args = parser.parse_args(argv)
    out = run_cli(export, args.workdir, args.out)
    print(f"fmjax: wrote {out} (transformers from_pretrained)")


if __name__ == "__main__":
    main()
