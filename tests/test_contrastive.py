"""Contrastive image-text: losses vs NumPy, 1 vs 8 devices, recall@k, emoji data, training."""

from __future__ import annotations

import json
import os
import unicodedata

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from run_records import metric_records
from sharding_checks import losses_on_mesh

from fmjax.data.corpora import is_validation
from fmjax.data.corpora.emoji import CLASS_NAMES, VALIDATION_FRACTION, coarse_label
from fmjax.data.pairs import build_pair_data, encode_texts, random_shift_crop
from fmjax.data.pipeline import example_rng
from fmjax.data.task_data import EvalBatches, TaskData
from fmjax.data.tokenizer import CLS_ID, PAD_ID, SEP_ID
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models.contrastive import MAX_LOGIT_SCALE
from fmjax.parallel.mesh import make_mesh
from fmjax.parallel.sharding import sharding_context
from fmjax.tasks import build_task
from fmjax.tasks.contrastive import clip_loss, recall_at_k, siglip_loss, similarity_logits
from fmjax.train import trainer
from fmjax.train.step import build_program, grad_accum_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(preset: str | None = None) -> ml_collections.ConfigDict:
    return experiment_config("contrastive_tiny", preset)


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def naive_clip_loss(images: np.ndarray, texts: np.ndarray, scale: float) -> float:
    """Symmetric cross-entropy with explicit loops (CLIP paper, Figure 3)."""
    n = len(images)
    logits = [[scale * float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        row = np.log(sum(np.exp(logits[i][j]) for j in range(n))) - logits[i][i]
        col = np.log(sum(np.exp(logits[j][i]) for j in range(n))) - logits[i][i]
        total += 0.5 * (row + col)
    return total / n


def naive_siglip_loss(images: np.ndarray, texts: np.ndarray, scale: float, bias: float) -> float:
    """-1/|B| sum_i sum_j log sigmoid(z_ij (t x_i . y_j + b)) (SigLIP paper, Algorithm 1)."""
    n, total = len(images), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale * float(images[i] @ texts[j]) + bias
            total += np.log(1.0 / (1.0 + np.exp(-z * logit)))
    return -total / n


def naive_recall(similarities: np.ndarray, k: int) -> float:
    """Row i is a hit when column i is among the k best after a stable sort, ties against it."""
    hits = 0
    for i, row in enumerate(similarities):
        better = [j for j in range(len(row)) if j != i and row[j] >= row[i]]
        hits += len(better) < k
    return hits / len(similarities)


@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (14.3, 0.0), (10.0, -10.0), (3.0, 2.5)])
def test_losses_match_a_naive_numpy_reference(scale, bias):
    rng = np.random.default_rng(int(scale * 10))
    images, texts = unit_rows(rng, 6, 5), unit_rows(rng, 6, 5)
    texts[2] = images[2]  # one very good pair, so the loss is not near-uniform
    logits = similarity_logits(images, texts, scale, bias)
    np.testing.assert_allclose(
        float(np.mean(clip_loss(similarity_logits(images, texts, scale, 0.0)))),
        naive_clip_loss(images, texts, scale),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(np.mean(siglip_loss(logits))),
        naive_siglip_loss(images, texts, scale, bias),
        rtol=1e-5,
    )
    # Swapping the roles of images and texts leaves the symmetric CLIP loss unchanged.
    swapped = similarity_logits(texts, images, scale, 0.0)
    np.testing.assert_allclose(
        np.mean(clip_loss(swapped)),
        np.mean(clip_loss(similarity_logits(images, texts, scale, 0.0))),
        rtol=1e-6,
    )


def test_recall_at_k_matches_a_naive_ranking():
    rng = np.random.default_rng(0)
    similarities = rng.normal(size=(40, 40))
    similarities[np.arange(40), np.arange(40)] += np.linspace(-1, 3, 40)
    for k in (1, 5, 40):
        assert recall_at_k(similarities, k) == naive_recall(similarities, k)
        assert recall_at_k(similarities.T, k) == naive_recall(similarities.T, k)
    assert recall_at_k(similarities, 40) == 1.0
    assert recall_at_k(np.eye(7), 1) == 1.0
    assert recall_at_k(np.ones((7, 7)), 6) == 0.0  # all tied: a tie never counts as a hit
    assert recall_at_k(np.ones((7, 7)), 7) == 1.0
    assert 0.1 < recall_at_k(rng.normal(size=(400, 400)), 50) < 0.15  # chance is k / N


def random_pair_batch(task, batch_size: int, vocab_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    length = task.seq_len
    lengths = rng.integers(3, length + 1, size=batch_size)
    ids = rng.integers(5, vocab_size, size=(batch_size, length)).astype(np.int32)
    ids[:, 0] = CLS_ID
    ids[np.arange(batch_size), lengths - 1] = SEP_ID
    ids[np.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
    return {
        "images": rng.normal(size=(batch_size, *task.image_shape)).astype(np.float32),
        "input_ids": ids,
        "labels": np.zeros(batch_size, np.int32),
    }


@pytest.mark.parametrize("preset", ["smoke", "smoke,siglip"], ids=["clip", "siglip"])
def test_global_batch_loss_is_the_same_on_1_and_8_devices(preset):
    config = experiment(preset)
    config.model.compute_dtype = "float32"
    config.train.batch_size = 16

    def random_batch(task, step):
        return random_pair_batch(task, config.train.batch_size, 1024, step)

    single = losses_on_mesh(config, {"data": 1, "fsdp": 1, "tensor": 1}, random_batch, 2)
    sharded = losses_on_mesh(config, {"data": 8, "fsdp": 1, "tensor": 1}, random_batch, 2)
    # A per-device loss (2 negatives per image on 8 devices) would be far smaller than the
    # global one (16): log(16) ~ 2.8 at init for CLIP.
    if "siglip" not in preset:
        assert single[0] > 2.0
    np.testing.assert_allclose(sharded, single, rtol=2e-5, atol=2e-5)


def test_evaluate_embeds_the_whole_split_in_padded_batches():
    """task.evaluate over 13 pairs in batches of 8 equals one unbatched pass and naive recall."""
    config = experiment("smoke")
    config.model.compute_dtype = "float32"
    config.train.batch_size = 8
    config.mesh.update(data=8, fsdp=1, tensor=1)
    task = build_task(config)
    mesh = make_mesh(config.mesh)
    rng = np.random.default_rng(3)
    rows = random_pair_batch(task, 13, 1024, seed=9)
    rows["labels"] = rng.integers(0, len(CLASS_NAMES), size=13).astype(np.int32)
    source = [{k: v[i] for k, v in rows.items()} for i in range(13)]
    prompts = random_pair_batch(task, len(CLASS_NAMES) - 1, 1024, seed=4)["input_ids"]
    held_out = TaskData(
        train=None,
        eval_batches=EvalBatches(source, lambda example, rng: dict(example), 8, seed=0),
        provenance={},
        class_names=CLASS_NAMES[:-1],
        class_prompt_ids=prompts,
    )
    with sharding_context(config, mesh):
        program = build_program(config, task, mesh)
        params = program.init_state()["params"]
        values = task.evaluate(program, params, held_out)
        model = nnx.merge(program.graphdef, jax.device_get(params))
    with nnx.use_eager_sharding(False):
        images = np.asarray(model.encode_images(rows["images"], deterministic=True))
        texts = np.asarray(model.encode_texts(rows["input_ids"], deterministic=True))
        prompt_embeddings = np.asarray(model.encode_texts(prompts, deterministic=True))
    similarities = images @ texts.T
    assert values["num_pairs"] == 13
    for k in (1, 5):
        assert values[f"image_to_text_recall_at_{k}"] == naive_recall(similarities, k)
        assert values[f"text_to_image_recall_at_{k}"] == naive_recall(similarities.T, k)
    labeled = rows["labels"] < len(CLASS_NAMES) - 1
    predicted = np.argmax(images[labeled] @ prompt_embeddings.T, axis=1)
    assert values["zero_shot_accuracy"] == pytest.approx(
        np.mean(predicted == rows["labels"][labeled])
    )
    scale = float(np.exp(params["logit"]["scale"]))
    expected_loss = naive_clip_loss(images, texts, scale)
    assert values["loss"] == pytest.approx(expected_loss, rel=1e-4)
    # A learned scale past MAX_LOGIT_SCALE: evaluation clamps it at 100 as training does.
    params["logit"]["scale"] = jax.numpy.float32(np.log(1000.0))
    with sharding_context(config, mesh):
        clamped = task.evaluate(program, params, held_out)
    assert clamped["loss"] == pytest.approx(
        naive_clip_loss(images, texts, MAX_LOGIT_SCALE), rel=1e-4
    )


def test_text_encoding_and_augmentation():
    class FakeTokenizer:
        def encode_batch(self, texts):
            return [
                type("E", (), {"ids": [CLS_ID, *range(10, 10 + len(t)), SEP_ID]}) for t in texts
            ]

    ids = encode_texts(FakeTokenizer(), ["ab", "abcdefgh"], seq_len=6)
    np.testing.assert_array_equal(ids[0], [CLS_ID, 10, 11, SEP_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(ids[1], [CLS_ID, 10, 11, 12, 13, SEP_ID])  # cut, ends in SEP
    image = np.full((32, 32, 3), 255, np.uint8)
    image[10:20, 10:20] = 0
    crops = [random_shift_crop(image, 2, example_rng(0, i)) for i in range(10)]
    assert all(c.shape == image.shape for c in crops)
    assert len({c.tobytes() for c in crops}) > 3
    assert all(c[0, 0].tolist() == [255, 255, 255] for c in crops)  # edge-padded, not black
    np.testing.assert_array_equal(
        random_shift_crop(image, 2, example_rng(0, 3)),
        random_shift_crop(image, 2, example_rng(0, 3)),
    )
    assert coarse_label("cat face with tears of joy") == CLASS_NAMES.index("cat")
    assert coarse_label("clock face one oclock") == CLASS_NAMES.index("clock")
    assert coarse_label("crown") == CLASS_NAMES.index("other")


def test_config_errors_name_the_fix(tmp_path):
    config = experiment("smoke")
    config.task.loss = "triplet"
    with pytest.raises(ConfigError, match="task.loss"):
        build_task(config)
    config = experiment("smoke")
    config.train.grad_accum_steps = 2
    with pytest.raises(ConfigError, match="grad_accum_steps=1"):
        grad_accum_steps(config, build_task(config))
    config = experiment("smoke")
    config.data.update(dataset="laion", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown data.dataset"):
        build_pair_data(config)
    config = experiment("smoke")
    config.data.update(image_size=64, data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="emoji are 32x32"):
        build_pair_data(config)
    with pytest.raises(ValueError, match="unknown preset"):
        experiment("huge")


def test_experiment_compiles_on_8_devices(tmp_path):
    config = experiment()
    config.mesh.update(data=2, fsdp=4, tensor=1)
    report = trainer.compile_report(config, str(tmp_path))
    assert report["num_devices"] == 8
    assert report["per_device"]["argument_bytes"] > 0
    assert json.loads((tmp_path / "compile.json").read_text())["flops_per_step"] > 0
    assert 0.5 < report["model_flops_per_step"] / report["flops_per_step"] < 1.5


# ---------------------------------------------------------------- integration (real font)


def test_emoji_data_from_the_real_font(shared_data_dir):
    """The Debian font (fetched once per machine): names, splits, classes and provenance."""
    config = experiment("smoke")
    config.data.data_dir = shared_data_dir
    data = build_pair_data(config)
    prov = data.provenance
    assert prov["package"] == "fonts-noto-color-emoji" and len(prov["sha256"]) == 64
    assert prov["version"] and prov["unicode_version"] == unicodedata.unidata_version
    assert prov["num_train_examples"] > 1000 and prov["num_validation_examples"] > 100
    held_out = prov["num_validation_examples"] / (
        prov["num_train_examples"] + prov["num_validation_examples"]
    )
    assert abs(held_out - VALIDATION_FRACTION) < 0.03
    assert prov["num_truncated_train_captions"] == 0
    assert len(prov["tokenizer"]["sha256"]) == 64
    batches = data.eval_batches
    assert batches.num_examples == prov["num_validation_examples"]
    source = batches.source.source
    for i in range(0, len(source), 17):
        example = source[i]
        caption = example["caption"].decode()
        assert caption == unicodedata.name(chr(int(example["codepoint"]))).lower()
        assert is_validation(caption, VALIDATION_FRACTION)
        assert example["label"] == coarse_label(caption)
        assert example["image"].shape == (32, 32, 3) and example["image"].min() < 200
    assert data.class_prompt_ids.shape == (len(CLASS_NAMES) - 1, config.data.seq_len)
    train = data.train.batch(0)
    assert train["images"].shape == (32, 32, 32, 3) and train["input_ids"].shape == (32, 16)
    assert -1.0 <= train["images"].min() and train["images"].max() <= 1.0
    assert (train["input_ids"][:, 0] == CLS_ID).all()
    np.testing.assert_array_equal(data.train.batch(5)["images"], data.train.batch(5)["images"])


@pytest.mark.parametrize("preset", ["smoke", "smoke,siglip"])
def test_smoke_training_reduces_the_loss(shared_data_dir, tmp_path, preset):
    config = experiment(preset)
    config.data.data_dir = shared_data_dir
    workdir = tmp_path / "run"
    summary = trainer.train(config, str(workdir))
    losses = [r["loss"] for r in metric_records(workdir, "train")]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    (evaluation,) = metric_records(workdir, "eval")
    for key in ("image_to_text", "text_to_image"):
        assert 0.0 <= evaluation[f"{key}_recall_at_1"] <= evaluation[f"{key}_recall_at_5"] <= 1.0
    assert 0.0 <= evaluation["zero_shot_accuracy"] <= 1.0
    assert evaluation["num_pairs"] == summary["eval_num_pairs"] > 100
    assert ("logit_bias" in metric_records(workdir)[0]) == ("siglip" in preset)
