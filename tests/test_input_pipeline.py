"""Input pipeline on grain: same batches with any worker count, per-process rows, resume."""

from __future__ import annotations

import functools

import ml_collections
import numpy as np
import pytest

from fmjax.data.images import fashion_mnist_example
from fmjax.data.mlm import mask_train_batch
from fmjax.data.pipeline import MemmapRows, loader_options, make_loader, position_uniforms
from fmjax.errors import ConfigError

PAD, UNK, CLS, SEP, MASK = range(5)


def _take(loader, start_step: int, count: int) -> list[dict[str, np.ndarray]]:
    iterator = loader.iterate(start_step)
    batches = [next(iterator) for _ in range(count)]
    iterator.close()
    return batches


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert type(x[key]) is np.ndarray and x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture
def prepared_rows(tmp_path):
    """A memory-mapped .npy of token rows, as prepared text is loaded today."""
    rows = np.random.default_rng(0).integers(5, 50, size=(27, 16)).astype(np.int32)
    path = str(tmp_path / "rows.npy")
    np.save(path, rows)
    return np.load(path, mmap_mode="r")


def test_memmap_source_pickles_as_its_path(prepared_rows):
    import pickle

    source = MemmapRows(prepared_rows)
    payload = pickle.dumps(source)
    assert len(payload) < prepared_rows.nbytes  # the path, not the 27 x 16 tokens
    np.testing.assert_array_equal(pickle.loads(payload)[26], prepared_rows[26])


def test_batch_masking_draws_are_seeded_by_position_and_have_bert_statistics():
    rows = np.random.default_rng(3).integers(5, 50, size=(4000, 32)).astype(np.int32)
    rows[:, 0], rows[:, 20:] = CLS, PAD
    mask = functools.partial(
        mask_train_batch, seed=1, mask_prob=0.15, max_predictions=5, vocab_size=50
    )
    out = mask({"input_ids": rows}, np.arange(4000))
    again = mask(
        {"input_ids": rows[10:20]}, np.arange(10, 20)
    )  # any slice of the stream: the same draws
    for key in out:
        np.testing.assert_array_equal(out[key][10:20], again[key])
    weights = out["masked_weights"].astype(bool)
    assert np.all(weights.sum(1) == 3)  # round(0.15 * 19 candidates)
    new = np.take_along_axis(out["input_ids"], out["masked_positions"], axis=1)[weights]
    assert abs(np.mean(new == MASK) - 0.8) < 0.02
    assert abs(np.mean(new == out["masked_ids"][weights]) - 0.1) < 0.02
    assert not np.isin(out["masked_positions"][weights], [0, *range(20, 32)]).any()
    uniforms = position_uniforms(7, np.arange(1000), 64, stream=0)
    assert 0 <= uniforms.min() and uniforms.max() < 1 and abs(uniforms.mean() - 0.5) < 0.01


def test_worker_processes_give_the_in_process_batches_and_resume_exactly(prepared_rows):
    """MLM masking in 1 worker == in-process, per process; resuming at step 3 == uninterrupted."""

    def batch_mask(rows, positions):  # prepared text rows are dicts; these are bare arrays
        return mask_train_batch(
            {"input_ids": rows}, positions, seed=5, mask_prob=0.15, max_predictions=4, vocab_size=50
        )

    loaders = {
        (workers, process): make_loader(
            prepared_rows,
            None,
            batch_transform=batch_mask,
            global_batch_size=8,
            seed=5,
            process_index=process,
            process_count=2,
            worker_count=workers,
        )
        for workers in (0, 1)
        for process in (0, 1)
    }
    uninterrupted = _take(loaders[0, 1], 0, 6)  # 6 steps of 8 cross the 27-row epoch
    _assert_same(uninterrupted, [loaders[0, 1].batch(step) for step in range(6)])
    _assert_same(_take(loaders[1, 1], 3, 3), uninterrupted[3:])
    whole = make_loader(
        prepared_rows,
        None,
        batch_transform=batch_mask,
        global_batch_size=8,
        seed=5,
        process_index=0,
        process_count=1,
    )
    for step in (0, 4):
        halves = [loaders[0, process].batch(step) for process in (0, 1)]
        joined = {key: np.concatenate([h[key] for h in halves]) for key in halves[0]}
        _assert_same([joined], [whole.batch(step)])


def test_image_augmentation_in_two_workers_matches_in_process():
    """Seeded crop + flip per example: the same pixels whichever worker made the batch."""
    rng = np.random.default_rng(1)
    source = [
        {"image": rng.integers(0, 256, size=(10, 10, 1), dtype=np.uint8), "label": i % 3}
        for i in range(13)
    ]
    transform = functools.partial(fashion_mnist_example, train=True, crop_padding=2, flip=True)
    kwargs = dict(global_batch_size=4, seed=9, process_index=0, process_count=1)
    in_process = _take(make_loader(source, transform, **kwargs), 2, 5)
    in_workers = _take(make_loader(source, transform, worker_count=2, **kwargs), 2, 5)
    _assert_same(in_workers, in_process)
    assert not np.array_equal(in_process[0]["images"], in_process[1]["images"])


def test_loader_options_are_checked():
    data = ml_collections.ConfigDict(dict(worker_count=2, read_threads=1, prefetch_buffer=2))
    config = ml_collections.ConfigDict(dict(data=data))
    assert loader_options(config) == dict(worker_count=2, read_threads=1, prefetch_buffer=2)
    config.data.worker_count = -1
    with pytest.raises(ConfigError, match="data.worker_count=-1"):
        loader_options(config)


def test_input_pipeline_benchmark_runs_in_quick_mode(shared_data_dir, capsys):
    """benchmarks/input_pipeline.py --quick: every family's row, in-process (workers above)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "input_pipeline.py")
    spec = importlib.util.spec_from_file_location("input_pipeline_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    rows = benchmark.main(["--quick", "--workers", "0", "--data_dir", shared_data_dir])
    assert [row["family"] for row in rows] == ["bert_base", "gpt2_small", "vit_b16", "contrastive"]
    assert all(row["workers_0"] > 0 and row["h100"] > 0 for row in rows)
    table = capsys.readouterr().out
    assert "1 H100 @40% MFU ex/s" in table and table.count("\n") == 2 + len(rows)
