"""ViT: patchify, augmentation determinism, Fashion-MNIST builder, training, ViT-B/16 compile."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from run_records import metric_records

from fmjax.data.corpora.fashion_mnist import SPLIT_FILES, read_idx, write_idx
from fmjax.data.images import (
    build_image_data,
    fashion_mnist_example,
    inception_crop_box,
    random_crop,
)
from fmjax.data.pipeline import example_rng
from fmjax.data.task_data import EvalBatches
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models.vit import patchify, unpatchify
from fmjax.tasks import build_task
from fmjax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name: str, preset: str | None = None):
    return experiment_config(name, preset)


def write_fixture(folder, sizes=(("train", 40), ("test", 13)), seed=0) -> dict:
    """Idx files of random 28x28 images whose label is readable from the pixels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in sizes:
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = rng.integers(0, 50, size=(count, 28, 28)).astype(np.uint8)
        images[:, 0, 0] = labels * 20  # a pixel that names the label, to check pairing
        image_file, label_file = SPLIT_FILES[split]
        write_idx(os.path.join(folder, image_file), images)
        write_idx(os.path.join(folder, label_file), labels)
        arrays[split] = (images, labels)
    return arrays


def test_patchify_round_trip_and_layout():
    images = jax.random.normal(jax.random.key(0), (2, 12, 8, 3))
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    np.testing.assert_array_equal(unpatchify(patches, 4, 12, 8), images)
    # Patch 3 is row 1, column 1 of the 3x2 grid; its pixels are (y, x, c) row-major.
    np.testing.assert_array_equal(patches[:, 3], images[:, 4:8, 4:8, :].reshape(2, -1))


def test_augmentation_is_a_pure_function_of_seed_and_index():
    image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    example = {"image": image, "label": 3}

    def augment(seed, index):
        return fashion_mnist_example(
            example, example_rng(seed, index), train=True, crop_padding=2, flip=True
        )["images"]

    np.testing.assert_array_equal(augment(0, 5), augment(0, 5))
    views = [augment(0, i) for i in range(12)]
    assert len({v.tobytes() for v in views}) > 6  # crops and flips differ across the stream
    assert any(not np.array_equal(augment(0, i), augment(1, i)) for i in range(4))
    evaluated = fashion_mnist_example(
        example, example_rng(0, 0), train=False, crop_padding=2, flip=True
    )
    assert evaluated["images"].shape == (28, 28, 1) and evaluated["images"].dtype == np.float32
    # The crop keeps the image size and moves it by at most `padding` pixels.
    crop = random_crop(image, 2, np.random.default_rng(0))
    assert crop.shape == image.shape
    top, left, height, width = inception_crop_box(300, 200, np.random.default_rng(1))
    assert 0 <= top and top + height <= 300 and 0 <= left and left + width <= 200


def test_builder_reads_an_idx_fixture_and_eval_covers_the_split_exactly(tmp_path):
    source = tmp_path / "idx"
    source.mkdir()
    arrays = write_fixture(str(source))
    images, labels = arrays["test"]
    np.testing.assert_array_equal(read_idx(str(source / SPLIT_FILES["test"][0])), images)

    config = experiment("vit_tiny.py", "smoke")
    config.data.update(data_dir=str(tmp_path / "data"), source_dir=str(source))
    config.train.batch_size = 8
    data = build_image_data(config)
    assert data.provenance["package"] == "dataset-fashion-mnist"
    assert set(data.provenance["sha256"]) == {n for pair in SPLIT_FILES.values() for n in pair}
    assert data.provenance["num_train_examples"] == 40
    assert data.provenance["num_test_examples"] == 13

    batches = list(data.eval_batches)
    assert len(batches) == 2  # 13 images: 8 + 5 real rows and 3 padding rows at weight 0
    weights = np.concatenate([b["weights"] for b in batches])
    np.testing.assert_array_equal(weights, [1.0] * 13 + [0.0] * 3)
    got_labels = np.concatenate([b["labels"] for b in batches])[:13]
    assert sorted(got_labels.tolist()) == sorted(labels.tolist())
    # Each image arrives with its own label (pixel (0, 0) encodes it), un-augmented.
    for batch in batches:
        pixels = batch["images"][:, 0, 0, 0] * 0.3530 + 0.2860
        np.testing.assert_allclose(pixels * 255 / 20, batch["labels"], atol=1e-3)

    train = data.train.batch(0)
    assert train["images"].shape == (8, 28, 28, 1) and train["labels"].dtype == np.int32
    np.testing.assert_array_equal(data.train.batch(3)["images"], data.train.batch(3)["images"])


def test_image_data_errors_name_the_fix(tmp_path):
    config = experiment("vit_b16.py")
    config.data.data_dir = str(tmp_path)
    with pytest.raises(ConfigError, match="not prepared.*tfds build imagenet2012"):
        build_image_data(config)
    config = experiment("vit_tiny.py", "smoke")
    config.data.dataset = "cifar"
    with pytest.raises(ConfigError, match="unknown data.dataset"):
        build_image_data(config)
    source = tmp_path / "idx"
    source.mkdir()
    write_fixture(str(source), sizes=(("train", 4), ("test", 2)))
    config = experiment("vit_tiny.py", "smoke")
    config.data.update(data_dir=str(tmp_path / "d"), source_dir=str(source))
    config.model.num_classes = 7
    with pytest.raises(ConfigError, match="num_classes=10"):
        build_image_data(config)


def test_eval_batches_pad_with_zero_weight():
    source = [{"image": np.full((28, 28, 1), i, np.uint8), "label": i % 10} for i in range(5)]

    def transform(example, rng):
        return fashion_mnist_example(example, rng, train=False, crop_padding=0, flip=False)

    batches = EvalBatches(source, transform, batch_size=4, seed=0)
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1]["weights"], [1, 0, 0, 0])
    np.testing.assert_array_equal(batches[1]["labels"][:1], [4])


def test_flops_formula_counts_a_known_tiny_vit():
    config = experiment("vit_tiny.py", "smoke")  # 28px, patch 7: 16 patches, d 32, 1 layer
    task = build_task(config)
    assert task.tokens_per_example() == 16
    d, f, tokens, patch_dim = 32, 64, 16, 49
    forward = 2 * 16 * patch_dim * d + tokens * (2 * (4 * d * d + 2 * d * f) + 4 * tokens * d)
    forward += 2 * d * 10
    assert task.train_flops_per_example() == 3 * forward


@pytest.mark.parametrize("pooling", ["gap", "cls"])
def test_vit_tiny_training_reduces_the_loss(shared_data_dir, tmp_path, pooling):
    """A few steps on the real Fashion-MNIST (fetched once per machine) lower the loss."""
    config = experiment("vit_tiny.py", "smoke")
    config.data.data_dir = shared_data_dir
    config.model.pooling = pooling
    workdir = tmp_path / "run"
    summary = trainer.train(config, str(workdir))
    losses = [r["loss"] for r in metric_records(workdir, "train")]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    evals = metric_records(workdir, "eval")
    assert len(evals) == 1 and 0.0 <= evals[0]["accuracy"] <= 1.0
    assert summary["eval_accuracy"] > 0.15  # 8 steps already beat chance (0.1)
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["data"]["num_test_examples"] == 10_000
    assert manifest["data"]["sha256"] and manifest["data"]["version"]


def test_vit_b16_compiles_on_8_devices(tmp_path):
    config = experiment("vit_b16.py")
    config.mesh.update(data=2, fsdp=4, tensor=1)
    report = trainer.compile_report(config, str(tmp_path))
    assert report["num_devices"] == 8
    assert json.loads((tmp_path / "compile.json").read_text())["flops_per_step"] > 0
    # ViT-B/16 has 86M parameters; fsdp=4 leaves each device a quarter of the float32 params
    # and Adam moments (~0.26 GB of 1.03 GB) plus its 128 images (~0.08 GB).
    assert report["per_device"]["argument_bytes"] < 0.5 * 86e6 * 4 * 3
    assert 0.5 < report["model_flops_per_step"] / report["flops_per_step"] < 1.5
