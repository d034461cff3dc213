"""SimCLR on the ViT tower: NT-Xent from the CLIP loss, two views per image, linear probe."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sharding_checks import losses_on_mesh

from fmjax.data.corpora.fashion_mnist import SPLIT_FILES, write_idx
from fmjax.data.images import build_image_data, build_view_data, fashion_mnist_views
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.params_io import flat_names, resolve_checkpoint, restore_params
from fmjax.tasks.contrastive import clip_loss
from fmjax.tasks.simclr import partner_logits
from fmjax.train import trainer


def naive_nt_xent(first: np.ndarray, second: np.ndarray, temperature: float) -> np.ndarray:
    """SimCLR's loss per view, written out: -log softmax over the 2B - 1 other views."""
    views = np.concatenate([first, second]).astype(np.float64)
    n = len(first)
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        scores = np.array([views[i] @ views[j] / temperature for j in range(2 * n) if j != i])
        others = [j for j in range(2 * n) if j != i]
        positive = scores[others.index(partner)]
        losses.append(np.log(np.sum(np.exp(scores))) - positive)
    return np.array(losses)


def unit_rows(rng, shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_nt_xent_from_the_clip_loss_matches_a_naive_reference():
    rng = np.random.default_rng(0)
    first, second = unit_rows(rng, (5, 8)), unit_rows(rng, (5, 8))
    logits = partner_logits(first, second, np.ones(5, np.float32), 0.3)
    reference = naive_nt_xent(first, second, 0.3)
    np.testing.assert_allclose(np.mean(clip_loss(logits)), reference.mean(), rtol=1e-5)
    # A weight-0 (padding) image is no candidate: the real views' loss is theirs alone.
    padded = partner_logits(
        np.concatenate([first, first[:2]]),
        np.concatenate([second, second[:2]]),
        np.array([1.0] * 5 + [0.0] * 2, np.float32),
        0.3,
    )
    real = np.r_[0:5, 7:12]
    np.testing.assert_allclose(
        np.mean(np.asarray(clip_loss(padded))[real]), reference.mean(), rtol=1e-5
    )


def write_images(folder, images: np.ndarray, labels: np.ndarray, test_count: int = 6) -> None:
    for split, (x, y) in {
        "train": (images, labels),
        "test": (images[:test_count], labels[:test_count]),
    }.items():
        image_file, label_file = SPLIT_FILES[split]
        write_idx(os.path.join(folder, image_file), x)
        write_idx(os.path.join(folder, label_file), y)


@pytest.fixture
def fixture_dir(tmp_path):
    """48 train images: a brightness that names the image (pixel (0, 0)) on random texture."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, size=(48, 28, 28)).astype(np.uint8)
    labels = (np.arange(48) % 10).astype(np.uint8)
    images[:, 10:18, 10:18] = (100 + 3 * np.arange(48)).astype(np.uint8)[:, None, None]
    folder = tmp_path / "idx"
    folder.mkdir()
    write_images(str(folder), images, labels)
    return str(folder)


def config_on(name: str, preset: str, fixture_dir: str, tmp_path):
    config = experiment_config(name, preset)
    config.data.update(data_dir=str(tmp_path / "data"), source_dir=fixture_dir)
    return config


def test_two_views_differ_but_come_from_the_same_image(fixture_dir, tmp_path):
    config = config_on("vit_simclr", "smoke", fixture_dir, tmp_path)
    config.data.crop_area_min = 0.8  # crops that keep the centre patch that names the image
    config.data.jitter = 0.0
    data = build_view_data(config)
    batch = data.train.batch(0)
    first, second = batch["first_views"], batch["second_views"]
    assert first.shape == second.shape == (16, 28, 28, 1) and "labels" not in batch
    assert not np.allclose(first, second)  # independent crops and flips
    # Both views of a row show the same image: the same brightness at the centre.
    centre = slice(12, 16)
    np.testing.assert_allclose(
        np.median(first[:, centre, centre], axis=(1, 2, 3)),
        np.median(second[:, centre, centre], axis=(1, 2, 3)),
        atol=0.05,
    )
    assert len(np.unique(np.round(np.median(first[:, centre, centre], axis=(1, 2, 3)), 2))) > 8
    # Views are a pure function of (seed, position): eval sees the same ones each time.
    np.testing.assert_array_equal(
        data.eval_batches[0]["first_views"], data.eval_batches[0]["first_views"]
    )
    image = {"image": np.asarray(np.random.default_rng(1).integers(0, 255, (28, 28, 1)), np.uint8)}
    rng = np.random.default_rng(3)
    jittered = fashion_mnist_views(image, rng, crop_area=(1.0, 1.0), jitter=0.4)
    assert not np.allclose(jittered["first_views"], jittered["second_views"])
    config.data.dataset = "tfds:cifar10"
    with pytest.raises(ConfigError, match="data.dataset=fashion_mnist"):
        build_view_data(config)


def test_simclr_loss_falls_on_a_fixed_batch_and_is_the_same_on_8_devices(fixture_dir, tmp_path):
    config = config_on("vit_simclr", "smoke", fixture_dir, tmp_path)
    config.model.compute_dtype = "float32"
    config.task.temperature = 0.2  # sharper logits: a larger loss range for 10 steps to cover
    config.train.update(num_steps=100, learning_rate=3e-3, warmup_steps=1)  # no decay yet
    batch = build_view_data(config).train.batch(0)

    def fixed_batch(task, step):
        return batch

    single = losses_on_mesh(config, {"data": 1, "fsdp": 1, "tensor": 1}, fixed_batch, num_steps=10)
    assert single[-1] < single[1] - 0.2, single  # step 0 applies learning rate 0
    sharded = losses_on_mesh(config, {"data": 4, "fsdp": 2, "tensor": 1}, fixed_batch, num_steps=2)
    np.testing.assert_allclose(sharded, single[:2], rtol=2e-5)


def test_linear_probe_trains_only_the_head_of_the_pretrained_encoder(fixture_dir, tmp_path):
    pretrain = config_on("vit_simclr", "smoke", fixture_dir, tmp_path)
    trainer.train(pretrain, str(tmp_path / "simclr"))
    _, state_dir, _ = resolve_checkpoint(str(tmp_path / "simclr"))
    pretrained = flat_names(restore_params(state_dir))
    assert any(name.startswith("projection_hidden") for name in pretrained)

    def classifier(preset: str, name: str) -> tuple[dict, dict]:
        config = config_on("vit_simclr_cls", preset, fixture_dir, tmp_path)
        config.train.init_from = str(tmp_path / "simclr")
        config.data.validation_examples = 8
        config.train.batch_size = 8
        summary = trainer.train(config, str(tmp_path / name))
        _, state_dir, _ = resolve_checkpoint(str(tmp_path / name))
        return flat_names(restore_params(state_dir)), summary

    probed, summary = classifier("smoke,probe", "probe")
    assert 0.0 <= summary["eval_macro_f1"] <= 1.0  # on the 8 validation images
    encoder = [name for name in probed if not name.startswith("head")]
    assert encoder and set(encoder) <= set(pretrained)
    for name in encoder:  # bitwise: the frozen encoder gets no update at all
        np.testing.assert_array_equal(probed[name], pretrained[name], err_msg=name)
    assert np.any(np.asarray(probed["head/kernel"]) != 0)  # zero-initialized, then trained

    tuned, _ = classifier("smoke", "fine_tune")
    assert any(not np.array_equal(tuned[name], pretrained[name]) for name in encoder)

    config = config_on("vit_simclr_cls", "smoke,probe", fixture_dir, tmp_path)
    config.train.trainable = "heads"
    with pytest.raises(ConfigError, match="train.trainable names \\['heads'\\]"):
        trainer.train(config, str(tmp_path / "typo"))


def test_label_budget_and_validation_carve_for_images(fixture_dir, tmp_path):
    config = config_on("vit_simclr_cls", "smoke", fixture_dir, tmp_path)
    config.data.update(validation_examples=8, train_examples=12)
    config.train.batch_size = 4
    data = build_image_data(config)
    assert data.provenance["splits"]["num_examples"] == {"train": 12, "test": 6, "validation": 8}
    assert len(data.eval_batches) == 2  # the 8 validation images, not the test split
