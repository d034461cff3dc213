"""Label budgets and honest model selection for fine-tuning, and the transfer-curve tool."""

import json
import os

import numpy as np
import pytest
from test_finetune import write_reviews_fixture

from fmjax.data.label_splits import select_splits
from fmjax.errors import ConfigError
from fmjax.tools import transfer_curve


def splits_of(n: int) -> dict:
    texts = [f"review {i}" for i in range(n)]
    return {"train": (texts, None, list(range(n))), "test": (["t"], None, [0])}


def test_validation_is_fixed_and_the_label_subset_follows_the_seed():
    data = dict(validation_examples=10, train_examples=20, eval_split="validation")
    first, eval_split, provenance = select_splits(splits_of(100), data, seed=0)
    again, _, _ = select_splits(splits_of(100), data, seed=0)
    other, _, _ = select_splits(splits_of(100), data, seed=1)
    assert eval_split == "validation" and provenance["num_examples"]["train"] == 20
    assert first == again
    assert first["validation"] == other["validation"]  # every seed selects on the same reviews
    assert first["train"] != other["train"]
    validation, train = set(first["validation"][2]), set(first["train"][2])
    assert len(validation) == 10 and not validation & train
    everything, _, _ = select_splits(splits_of(100), dict(validation_examples=10), seed=0)
    assert len(everything["train"][2]) == 90 and everything["validation"] == first["validation"]
    with pytest.raises(ConfigError, match="validation_examples > 0"):
        select_splits(splits_of(100), dict(eval_split="validation"), seed=0)
    with pytest.raises(ConfigError, match="lower them"):
        select_splits(splits_of(100), dict(validation_examples=50, train_examples=60), seed=0)


def test_transfer_curve_selects_on_validation_and_reports_test(tmp_path):
    write_reviews_fixture(str(tmp_path / "src"))
    overrides = [
        f"data.data_dir={tmp_path / 'data'}",
        f"data.source_dir={tmp_path / 'src'}",
    ]
    config = transfer_curve.run_config("bert_mini_cls", "scratch", 32, 0, overrides)
    assert config.data.train_examples == 32 and config.train.init_from == ""
    record = transfer_curve.fine_tune(
        "bert_mini_cls", "scratch", 32, 0, overrides, str(tmp_path / "runs"), preset="smoke"
    )
    workdir = tmp_path / "runs" / "scratch-n32-seed0"
    with open(workdir / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    assert record["validation_accuracy"] == max(r["accuracy"] for r in evals)
    assert record["best_step"] in [r["step"] for r in evals]
    assert 0.0 <= record["test_accuracy"] <= 1.0 and 0.0 <= record["test_macro_f1"] <= 1.0
    with open(workdir / "config.json") as f:
        assert json.load(f)["data"]["eval_split"] == "validation"
    rows = transfer_curve.summarize(
        [dict(record, seed=s, test_accuracy=a) for s, a in enumerate((0.5, 0.7))]
    )
    assert rows[0]["accuracy_mean"] == pytest.approx(60.0)
    assert rows[0]["accuracy_std"] == pytest.approx(np.std([50.0, 70.0], ddof=1))
    table = transfer_curve.markdown_table(rows)
    assert "| 32 | scratch | 2 | 60.0 ± 14.1 | " in table
    transfer_curve.plot(rows, 72, str(tmp_path / "curve.png"))
    assert os.path.getsize(tmp_path / "curve.png") > 1000
