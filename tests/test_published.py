"""Published checkpoints and your own data, end to end (nothing downloaded).

The tests build directories as a published model ships them, with `transformers`: a BERT with a
vocab.txt in bert-base-uncased's layout ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103),
a Chinese variant (bert-base-chinese: cased, one token per CJK character), a GPT-2 with a
byte-level BPE in vocab.json + merges.txt and <|endoftext|> as its last id. They import them,
compare logits with transformers (1e-4), fine-tune on a CSV, continue pretraining, export and
reload the export in transformers.
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tokenizers  # noqa: E402
from hf_checks import randomize  # noqa: E402

from fmjax.data import clm, labeled_files  # noqa: E402
from fmjax.errors import ConfigError  # noqa: E402
from fmjax.experiments import experiment_config  # noqa: E402
from fmjax.tools import export_hf, import_hf, model_card  # noqa: E402
from fmjax.tools.workdir import load_run, make_model  # noqa: E402
from fmjax.train import generate, trainer  # noqa: E402
from fmjax.train.run import open_run  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine; all that glitters is not gold.",
    "Where there is a will there is a way, and time and tide wait for no one.",
    "The early bird catches the worm, but the second mouse gets the cheese.",
]
CHINESE = [
    ("这部电影非常好看，演员的表演很精彩。", "好评"),
    ("故事情节无聊，我看了一半就走了。", "差评"),
    ("音乐和画面都很美，值得再看一次。", "好评"),
    ("剧本很差，对话也没有意思。", "差评"),
]
TINY_BERT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=40,
)  # fmt: skip


def experiment(name: str, preset: str = "smoke"):
    return experiment_config(name, preset)


def published_vocab(texts: list[str], lowercase: bool) -> list[str]:
    """A vocab.txt in bert-base's layout: [PAD], [unused1..99], [UNK] [CLS] [SEP] [MASK] at
    100-103, then whole words, single characters and ##-continuations of the texts."""
    pre = tokenizers.pre_tokenizers.BertPreTokenizer()
    normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase)
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t))})
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]"]
    tokens = [*specials, "[MASK]", *words, *chars, *(f"##{c}" for c in chars)]
    return list(dict.fromkeys(tokens))  # one line per token, as a real vocab.txt


def write_bert_dir(directory, texts, lowercase, architecture="BertForMaskedLM", **save_kwargs):
    """A published-style BERT directory: config.json, safetensors, vocab.txt and
    tokenizer_config.json; no tokenizer.json (as many older uploads)."""
    os.makedirs(directory, exist_ok=True)
    vocab = published_vocab(texts, lowercase)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer"}, f)
    config = transformers.BertConfig(vocab_size=len(vocab), **TINY_BERT)
    hf_model = randomize(getattr(transformers, architecture)(config))
    hf_model.save_pretrained(directory, **save_kwargs)
    return hf_model, str(directory)


def bert_batch(hf_tokenizer, texts, length=24):
    encoded = hf_tokenizer(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="np"
    )
    return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)


def hf_bert_outputs(hf_model, ids, mask):
    """transformers' outputs of a BERT-family `hf_model` on int32 token ids and attention mask."""
    with torch.no_grad():
        return hf_model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )


def assert_close_at_real_tokens(ours, theirs, mask):
    """ours and theirs [B, L, ...] agree within 1e-4 at every real (unpadded) token of `mask`."""
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def english_bert(tmp_path_factory):
    """A published-style BertForPreTraining (as bert-base-uncased ships: MLM and next-sentence
    heads; sharded safetensors + index) and its import."""
    root = tmp_path_factory.mktemp("english")
    hf_model, hf_dir = write_bert_dir(
        root / "hf", ENGLISH, True, "BertForPreTraining", max_shard_size="40KB"
    )
    workdir = str(root / "imported")
    import_hf.import_hf(hf_dir, workdir, f"{REPO}/experiments/bert_tiny.py:smoke")
    return hf_model, hf_dir, workdir


@pytest.fixture(scope="module")
def chinese_bert(tmp_path_factory):
    """A bert-base-chinese-style directory saved from BertForSequenceClassification."""
    root = tmp_path_factory.mktemp("chinese")
    texts = [text for text, _ in CHINESE]
    hf_model, hf_dir = write_bert_dir(root / "hf", texts, False, "BertForSequenceClassification")
    workdir = str(root / "imported")
    import_hf.import_hf(hf_dir, workdir, f"{REPO}/experiments/bert_tiny.py:smoke")
    return hf_model, hf_dir, workdir


def test_published_bert_import_keeps_its_special_ids_and_logits(english_bert):
    hf_model, hf_dir, workdir = english_bert
    assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
    record = json.load(open(os.path.join(workdir, "import.json")))
    assert record["special_ids"] == {
        "[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103
    }  # fmt: skip
    assert "vocab.txt" in record["original_tokenizer_files"]
    hf_tokenizer = transformers.BertTokenizer(os.path.join(hf_dir, "vocab.txt"))
    ours = tokenizers.Tokenizer.from_file(os.path.join(workdir, "tokenizer.json"))
    for text in [*ENGLISH, "The QUICK fox, unknown-word!"]:
        assert ours.encode(text).ids == hf_tokenizer(text)["input_ids"], text
    run = load_run(workdir)
    ids, mask = bert_batch(hf_tokenizer, ENGLISH[:2])
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int32)
    types = np.zeros_like(ids)
    logits = make_model(run.config.model, run.params)(
        ids, types, mask, positions, deterministic=True
    )
    theirs = hf_bert_outputs(hf_model, ids, mask).prediction_logits.numpy()
    assert_close_at_real_tokens(logits, theirs, mask)
    assert "cls.seq_relationship.weight" in record["unused_tensors"]  # no NSP head in fmjax


def test_bert_model_checkpoint_and_tokenizer_config_override(tmp_path):
    """A BertModel checkpoint (no `bert.` prefix, no MLM head) imports with a fresh MLM head;
    tokenizer_config.json's do_lower_case=false overrides a lowercasing tokenizer.json, as
    transformers does."""
    hf_model, hf_dir = write_bert_dir(tmp_path / "hf", ENGLISH + ["Movie"], False, "BertModel")
    lowercasing = import_hf.wordpiece_from_vocab(f"{hf_dir}/vocab.txt", {"do_lower_case": True})
    lowercasing.save(f"{hf_dir}/tokenizer.json")
    assert lowercasing.encode("Movie").tokens[1] != "Movie"  # lowercased: not that word
    import_hf.import_hf(hf_dir, str(tmp_path / "run"), f"{REPO}/experiments/bert_tiny.py:smoke")
    ours = tokenizers.Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    assert ours.encode("Movie").tokens[1] == "Movie"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tokenizer("Movie")["input_ids"] == ours.encode("Movie").ids
    run = load_run(str(tmp_path / "run"))
    ids, mask = bert_batch(hf_tokenizer, ENGLISH[:2])
    hidden = make_model(run.config.model, run.params).encode(
        ids, np.zeros_like(ids), mask, deterministic=True
    )
    theirs = hf_bert_outputs(hf_model, ids, mask).last_hidden_state.numpy()
    assert_close_at_real_tokens(hidden, theirs, mask)


def test_chinese_wordpiece_splits_cjk_characters_like_transformers(chinese_bert):
    hf_model, hf_dir, workdir = chinese_bert
    hf_tokenizer = transformers.BertTokenizer(
        os.path.join(hf_dir, "vocab.txt"), do_lower_case=False
    )
    ours = tokenizers.Tokenizer.from_file(os.path.join(workdir, "tokenizer.json"))
    for text in [t for t, _ in CHINESE] + ["电影 Movie 好看"]:
        assert ours.encode(text).ids == hf_tokenizer(text)["input_ids"], text
    assert ours.encode("好看").tokens == ["[CLS]", "好", "看", "[SEP]"]
    assert ours.encode("Movie").tokens[1] != "movie"  # cased, as bert-base-chinese
    record = json.load(open(os.path.join(workdir, "import.json")))
    assert "classifier.weight" in record["unused_tensors"]
    # The encoder imported from a BertForSequenceClassification checkpoint is transformers'.
    run = load_run(workdir)
    ids, mask = bert_batch(hf_tokenizer, [t for t, _ in CHINESE[:2]])
    model = make_model(run.config.model, run.params)
    hidden = model.encode(ids, np.zeros_like(ids), mask, deterministic=True)
    theirs = hf_bert_outputs(hf_model.bert, ids, mask).last_hidden_state.numpy()
    assert_close_at_real_tokens(hidden, theirs, mask)


def run_quietly(function, *args):
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = function(*args)
    return result, log.getvalue()


def test_fine_tune_on_a_chinese_csv_exports_a_transformers_classifier(chinese_bert, tmp_path):
    """classify.py on the imported Chinese BERT and a CSV of string labels; the export loads as
    BertForSequenceClassification with the original vocab.txt and the same logits."""
    _, hf_dir, imported = chinese_bert
    rows = [*CHINESE * 6, ("", "好评"), ("没有标签", "")]  # two bad rows: counted, skipped
    with open(tmp_path / "train.csv", "w", encoding="utf-8") as f:
        f.write("review,sentiment\n" + "".join(f'"{text}",{label}\n' for text, label in rows))
    config = experiment("classify.py")
    config.data.update(
        dataset=f"files:{tmp_path / 'train.csv'}", text_field="review", label_field="sentiment",
        test_fraction=0.3, data_dir=str(tmp_path / "data"),
    )  # fmt: skip
    config.train.init_from = imported
    workdir = str(tmp_path / "classifier")
    summary, log = run_quietly(trainer.train, config, workdir)
    assert np.isfinite(summary["eval_loss"]) and 0.0 <= summary["eval_accuracy"] <= 1.0
    assert "initialized" in log and "confusion matrix" in log
    manifest = json.load(open(os.path.join(workdir, "manifest.json")))
    assert manifest["data"]["class_names"] == ["好评", "差评"]
    assert manifest["data"]["skipped_rows"] == {"train": {"empty text": 1, "empty label": 1}}
    assert manifest["data"]["tokenizer"]["special_ids"]["cls"] == 101
    resolved = json.load(open(os.path.join(workdir, "config.json")))["model"]
    assert resolved["num_classes"] == 2 and resolved["embed_dim"] == 32  # from the data / import
    card = open(model_card.model_card(workdir), encoding="utf-8").read()
    assert "| classes (label ids in order) | 好评, 差评 |" in card and "empty label" in card

    out = export_hf.export(workdir, str(tmp_path / "hf"))
    assert open(os.path.join(out, "vocab.txt")).read() == open(f"{hf_dir}/vocab.txt").read()
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf_model.config.id2label == {0: "好评", 1: "差评"}
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids, mask = bert_batch(hf_tokenizer, [t for t, _ in CHINESE], length=32)
    run = load_run(workdir)
    ours = make_model(run.config.model, run.params)(ids, mask, deterministic=True)
    theirs = hf_bert_outputs(hf_model, ids, mask).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)


def test_continue_mlm_on_a_published_bert_then_export(english_bert, tmp_path, shared_data_dir):
    """Masked-LM pretraining continues with the published ids (masking uses [MASK]=103, packing
    [CLS]=101 / [SEP]=102 / [PAD]=0) and the export ships the original tokenizer."""
    hf_model, hf_dir, imported = english_bert
    config = experiment("continue_mlm.py")
    config.data.data_dir = shared_data_dir
    config.train.init_from = imported
    workdir = str(tmp_path / "adapted")
    summary, log = run_quietly(trainer.train, config, workdir)
    assert np.isfinite(summary["eval_loss"]) and "initialized" in log
    with open_run(config) as run:
        data = run.build_data()
    batch = next(data.train.iterate(0))
    assert (batch["input_ids"][:, 0] == 101).all() and (batch["input_ids"] == 103).any()
    assert not np.isin(
        batch["masked_ids"][batch["masked_weights"] > 0], [0, 100, 101, 102, 103]
    ).any()
    out = export_hf.export(workdir, str(tmp_path / "hf"))
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(out)
    assert (
        reloaded.config.pad_token_id == 0
        and reloaded.config.vocab_size == hf_model.config.vocab_size
    )
    assert transformers.AutoTokenizer.from_pretrained(out)("the fox")["input_ids"][0] == 101


def write_gpt2_dir(directory) -> tuple:
    """A GPT-2 directory as published: vocab.json + merges.txt of a trained byte-level BPE,
    <|endoftext|> its last id (GPT-2: 50256), safetensors weights."""
    os.makedirs(directory, exist_ok=True)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer_ = tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    bpe.train_from_iterator(ENGLISH * 20, trainer=trainer_)
    bpe.model.save(str(directory))  # vocab.json + merges.txt
    vocab = bpe.get_vocab()
    eot = vocab["<|endoftext|>"] = len(vocab)  # GPT-2's vocab.json holds it, last
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    config = transformers.GPT2Config(
        vocab_size=len(vocab), n_positions=40, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=eot, eos_token_id=eot,
    )  # fmt: skip
    hf_model = randomize(transformers.GPT2LMHeadModel(config))
    hf_model.save_pretrained(directory)
    return hf_model, str(directory), eot


def test_gpt2_from_vocab_and_merges_continues_generates_and_exports(tmp_path, shared_data_dir):
    hf_model, hf_dir, eot = write_gpt2_dir(tmp_path / "hf")
    imported = str(tmp_path / "imported")
    import_hf.import_hf(hf_dir, imported, f"{REPO}/experiments/gpt_tiny.py:smoke")
    record = json.load(open(os.path.join(imported, "import.json")))
    assert record["special_ids"] == {"<|endoftext|>": eot} and eot == hf_model.config.vocab_size - 1
    hf_tokenizer = transformers.GPT2Tokenizer(f"{hf_dir}/vocab.json", f"{hf_dir}/merges.txt")
    ours = tokenizers.Tokenizer.from_file(os.path.join(imported, "tokenizer.json"))
    ids = [eot, *hf_tokenizer(ENGLISH[1])["input_ids"]]
    assert ours.encode(ENGLISH[1]).ids == ids[1:]
    run = load_run(imported)
    ids = np.asarray([ids[:32]], np.int32)
    positions = np.arange(ids.shape[1])[None, :]
    logits = make_model(run.config.model, run.params)(
        ids, positions, np.ones_like(ids), deterministic=True
    )
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), theirs, atol=1e-4, rtol=1e-4)

    config = experiment("continue_clm.py")
    config.data.data_dir = shared_data_dir
    config.train.init_from = imported
    workdir = str(tmp_path / "adapted")
    summary, _ = run_quietly(trainer.train, config, workdir)
    assert np.isfinite(summary["eval_loss"])
    framed = clm.encode_documents(ours, [["The quick fox."]])[0]
    assert framed[0] == framed[-1] == eot  # documents are framed by the tokenizer's own id
    config.generate.update(prompt="The quick", temperature=0.0)
    texts, _ = run_quietly(generate.generate, config, workdir)
    assert texts[0].startswith("The quick")
    out = export_hf.export(workdir, str(tmp_path / "export"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.eos_token_id == eot
    assert open(os.path.join(out, "merges.txt")).read() == open(f"{hf_dir}/merges.txt").read()


# --- your own labeled files: errors and skips -----------------------------------------------------


def files_config(tmp_path, train: str, name: str = "train.csv", **data):
    (tmp_path / name).write_text(train, encoding="utf-8")
    config = experiment("classify.py")
    config.data.update(dataset=f"files:{tmp_path / name}", **data)
    return config


def test_labeled_files_read_csv_tsv_jsonl_pairs_and_hash_splits(tmp_path):
    tsv = "text\tlabel\tsecond\n" + "".join(f"row {i}\t{i % 3}\tpair {i}\n" for i in range(40))
    config = files_config(tmp_path, tsv, "train.tsv", text_pair_field="second", test_fraction=0.25)
    splits = labeled_files.read_labeled_splits(config)
    assert splits.class_names == ("0", "1", "2")  # integers keep their ids
    assert len(splits.train[0]) + len(splits.test[0]) == 40 and splits.test[1][0].startswith("pair")
    assert splits.test == labeled_files.read_labeled_splits(config).test  # seeded, stable
    jsonl = "\n".join(
        [json.dumps({"text": f"t{i}", "label": ["b", "a"][i % 2]}) for i in range(6)] + ["{bad"]
    )
    config = files_config(tmp_path, jsonl, "train.jsonl", test_file=str(tmp_path / "train.jsonl"))
    splits = labeled_files.read_labeled_splits(config)
    assert splits.class_names == ("a", "b") and splits.train[2][:2] == [1, 0]
    assert splits.provenance["skipped_rows"]["train"] == {"malformed line": 1}


@pytest.mark.parametrize(
    "content, data, message",
    [
        ("", {}, "no usable row"),
        ("words,label\nhello,1\n", {}, "no column 'text'"),
        ("text,label\na,x\nb,y\n", {"test_file": "TEST"}, "test label 'z' never occurs"),
        ("text,label\na,x\n", {"test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_labeled_files_errors_name_the_fix(tmp_path, content, data, message):
    if data.get("test_file") == "TEST":
        (tmp_path / "test.csv").write_text("text,label\nc,z\n")
        data = {"test_file": str(tmp_path / "test.csv")}
    config = files_config(tmp_path, content, **data)
    with pytest.raises(ConfigError, match=message):
        labeled_files.read_labeled_splits(config)


def test_tokenizer_follows_init_from_and_errors_blame_the_field_set(tmp_path):
    config = experiment("bert_tiny_cls.py", "")
    config.train.init_from = str(tmp_path / "mine")
    assert config.data.tokenizer_from == ""
    from fmjax.data.tokenizer import pretrained_tokenizer_path

    with pytest.raises(ConfigError, match=r"^train.init_from=.*mine does not exist"):
        pretrained_tokenizer_path(config)
    config.data.tokenizer_from = str(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"^data.tokenizer_from=.*other does not exist"):
        pretrained_tokenizer_path(config)
    config = experiment("classify.py")
    with pytest.raises(ConfigError, match="set --config.train.init_from"):
        with open_run(config):
            pass


def test_import_refuses_pickle_with_the_conversion_command(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    )
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError) as error:
        import_hf.import_hf(str(tmp_path), str(tmp_path / "run"))
    assert "transformers.BertForMaskedLM.from_pretrained(" in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


# --- ViT over the bridge; CLIP refused ------------------------------------------------------------


def test_vit_import_and_export_match_transformers(tmp_path):
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=8, patch_size=4, num_channels=3, num_labels=3,
    )  # fmt: skip
    hf_model = randomize(transformers.ViTForImageClassification(config))
    hf_model.save_pretrained(tmp_path / "hf")  # transformers 5 names (vit.layers.0.attention...)
    imported = str(tmp_path / "imported")
    import_hf.import_hf(str(tmp_path / "hf"), imported, f"{REPO}/experiments/vit_tiny.py:smoke")
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
    with torch.no_grad():
        theirs = hf_model(pixel_values=pixels).logits.numpy()
    run = load_run(imported, with_tokenizer=False)
    ours = make_model(run.config.model, run.params)(images, deterministic=True)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)
    out = export_hf.export(imported, str(tmp_path / "export"))  # transformers 4 names
    reloaded = transformers.ViTForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            reloaded(pixel_values=pixels).logits.numpy(), theirs, atol=1e-4, rtol=1e-4
        )


def test_clip_is_refused_both_ways_with_the_reason():
    with pytest.raises(ConfigError, match="text tower is causal"):
        import_hf.fmjax_model_fields({"model_type": "clip"})
    with pytest.raises(ConfigError, match="CLIPModel's architecture differs"):
        export_hf.check_exportable(experiment("contrastive_tiny.py").model)
    model = experiment("vit_tiny.py").model
    model.pooling = "gap"
    with pytest.raises(ConfigError, match="pooling='cls'"):
        export_hf.check_exportable(model)
