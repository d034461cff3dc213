"""Streaming text preparation: own files, sharded round trip, bounded memory, kill -9, Beam."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from fmjax.config import text_corpus_fields
from fmjax.data import files as files_lib
from fmjax.data import preparation
from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import split_lines
from fmjax.data.pipeline import make_loader
from fmjax.data.text import pack_documents, pack_sentences
from fmjax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = (
    "now is the winter of our discontent made glorious summer by this sun of york and all "
    "clouds that lour upon house in deep bosom ocean buried are brows bound with victorious "
    "wreaths bruised arms hung up for monuments stern alarums changed to merry meetings"
).split()


def _documents(seed: int, count: int, max_lines: int = 6) -> list[str]:
    rng = np.random.default_rng(seed)
    words = np.asarray(WORDS)
    return [
        "\n".join(
            " ".join(words[rng.integers(0, len(words), rng.integers(2, 14))])
            for _ in range(rng.integers(1, max_lines + 1))
        )
        for _ in range(count)
    ]


def _write_jsonl(path, documents: list[str], field: str = "text") -> None:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        for i, doc in enumerate(documents):
            f.write(json.dumps({field: doc, "id": i}) + "\n")


def _config(data_dir, corpus: str, layout: str = "mlm", **data) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict(dict(vocab_size=300 if layout == "clm" else 120))
    config.train = ml_collections.ConfigDict(dict(init_from=""))
    config.data = ml_collections.ConfigDict(text_corpus_fields(corpus))
    config.data.update(data_dir=str(data_dir), seq_len=32, validation_fraction=0.2, **data)
    return config


def _tokenizer(tmp_path, layout: str = "mlm") -> str:
    path = str(tmp_path / f"tokenizer-{layout}.json")
    train = (
        tokenizer_lib.train_or_load_wordpiece
        if layout == "mlm"
        else tokenizer_lib.train_or_load_byte_bpe
    )
    train(_documents(99, 200), 120 if layout == "mlm" else 300, path)
    return path


def _shards(record: dict) -> dict:
    return {
        s: [(x["rows"], x["sha256"]) for x in record["splits"][s]["shards"]]
        for s in ("train", "validation")
    }


def _record(prepared: preparation.PreparedText) -> dict:
    with open(os.path.join(prepared.provenance["prepared"]["directory"], "prepared.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------- files: and round trip


@pytest.mark.parametrize("layout", ["mlm", "clm"])
def test_sharded_round_trip_equals_in_memory_packing(tmp_path, monkeypatch, layout):
    """Every format; several units; rows == the in-memory packers over the same documents."""
    import pyarrow
    import pyarrow.parquet

    monkeypatch.setattr(preparation, "UNIT_BYTES", 3000)  # several units, several shards
    docs = _documents(0, 120)
    (tmp_path / "in").mkdir()
    _write_jsonl(tmp_path / "in" / "a.jsonl.gz", docs[:40], field="body")
    _write_jsonl(tmp_path / "in" / "b.jsonl", docs[40:80], field="body")
    pyarrow.parquet.write_table(
        pyarrow.table({"body": docs[80:119]}), str(tmp_path / "in" / "c.parquet")
    )
    (tmp_path / "in" / "d.txt").write_text(docs[119])
    config = _config(
        tmp_path / "data",
        f"files:{tmp_path}/in/*",
        layout,
        text_field="body",
        tokenizer_file=_tokenizer(tmp_path, layout),
    )
    prepared = preparation.prepare_text(config, layout, workers=2)
    record = _record(prepared)
    assert record["num_units"] > 2 and len(record["splits"]["train"]["shards"]) > 2
    assert record["num_documents"] == 120 and record["skipped_records"] == 0

    tok = prepared.tokenizer
    for split in ("train", "validation"):
        held_out = [preparation._held_out(d, 0.2) for d in docs]
        split_docs = [
            split_lines(d)
            for d, h in zip(docs, held_out, strict=True)
            if h == (split == "validation")
        ]
        source = prepared.sources[split]
        rows = [source[i] for i in range(len(source))]
        if layout == "mlm":
            ids = [[tok.encode(s, add_special_tokens=False).ids for s in d] for d in split_docs]
            expected = pack_sentences(ids, 32, 2, 3, 0)
            np.testing.assert_array_equal(np.stack([r["input_ids"] for r in rows]), expected)
        else:  # packed per unit: compare the token stream, not the row boundaries
            eot = tokenizer_lib.END_OF_TEXT_ID
            ids = [
                [eot, *tok.encode("\n".join(d), add_special_tokens=False).ids, eot]
                for d in split_docs
            ]
            got = np.concatenate([r["input_ids"][r["segment_ids"] > 0] for r in rows])
            np.testing.assert_array_equal(got, np.concatenate(ids))
            tokens, _ = pack_documents(ids, 32, eot)
            assert len(rows) >= len(tokens)
        assert all(r["input_ids"].dtype == np.int32 for r in rows)
        # batched reads (rows across shards, in any order) equal one-at-a-time reads
        order = np.random.default_rng(0).permutation(len(source))
        for got, index in zip(source.__getitems__(order), order, strict=True):
            for name, value in rows[index].items():
                np.testing.assert_array_equal(got[name], value)
        with pytest.raises(IndexError):
            source[len(source)]
    assert split_docs, "validation must not be empty"


def test_start_reads_the_record_never_the_corpus(tmp_path, monkeypatch):
    docs = _documents(1, 60)
    (tmp_path / "in").mkdir()
    _write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    config = _config(tmp_path / "data", f"files:{tmp_path}/in/*.jsonl")
    first = preparation.prepare_text(config, "mlm", workers=1)
    assert first.provenance["tokenizer"]["trained_on"]["sample_documents"] > 0

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(files_lib, "read_documents", no_reading)
    again = preparation.prepare_text(config, "mlm", workers=1)
    assert again.provenance == first.provenance
    assert len(again.sources["train"]) == len(first.sources["train"]) > 0
    os.utime(tmp_path / "in" / "a.jsonl", ns=(0, 0))  # a changed source is noticed (stat only)
    with pytest.raises(ConfigError, match="changed"):
        preparation.prepare_text(config, "mlm", workers=1)


def test_files_errors_are_one_line_config_errors(tmp_path):
    (tmp_path / "in").mkdir()
    _write_jsonl(tmp_path / "in" / "a.jsonl", _documents(2, 10), field="content")
    cases = {
        "files:": "empty glob",
        f"files:{tmp_path}/nothing/*.jsonl": "no files match",
        f"files:{tmp_path}/in/*.jsonl": "no text field 'text'",
    }
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip")
    cases[f"files:{tmp_path}/bad/*"] = "cannot read"
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "x.csv").write_text("a,b\n")
    cases[f"files:{tmp_path}/csv/*"] = "is not one of"
    for corpus, message in cases.items():
        with pytest.raises(ConfigError, match=message) as error:
            preparation.prepare_text(_config(tmp_path / "data", corpus), "mlm", workers=1)
        assert "\n" not in str(error.value)
    config = _config(tmp_path / "data", f"files:{tmp_path}/in/*.jsonl", text_field="content")
    config.data.validation_files = f"{tmp_path}/none/*.txt"
    with pytest.raises(ConfigError, match="data.validation_files: no files match"):
        preparation.prepare_text(config, "mlm", workers=1)


def test_undecodable_records_are_skipped_and_counted(tmp_path):
    (tmp_path / "in").mkdir()
    docs = _documents(3, 40)
    with open(tmp_path / "in" / "a.jsonl", "wb") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}).encode() + b"\n")
        f.write(b'{"text": "broken json\n')
        f.write(b'{"text": "bad utf-8 \xff\xfe"}\n')
        f.write(b'{"text": 7}\n')
    validation = tmp_path / "val.jsonl"
    _write_jsonl(validation, _documents(4, 10))
    config = _config(tmp_path / "data", f"files:{tmp_path}/in/*", validation_files=str(validation))
    prepared = preparation.prepare_text(config, "mlm", workers=1)
    assert prepared.provenance["prepared"]["skipped_records"] == 3
    assert prepared.provenance["prepared"]["num_documents"] == 50


def test_each_process_reads_only_its_rows(tmp_path):
    (tmp_path / "in").mkdir()
    _write_jsonl(tmp_path / "in" / "a.jsonl", _documents(5, 80))
    prepared = preparation.prepare_text(
        _config(tmp_path / "data", f"files:{tmp_path}/in/*"), "mlm", workers=1
    )

    class Counting:
        def __init__(self, source):
            self.source, self.read = source, set()

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            self.read.add(int(i))
            return self.source[i]

    sources = [Counting(prepared.sources["train"]) for _ in range(2)]
    loaders = [
        make_loader(
            s, lambda x, rng: x, global_batch_size=8, seed=0, process_index=p, process_count=2
        )
        for p, s in enumerate(sources)
    ]
    for loader in loaders:
        for step in range(3):
            loader.batch(step)
    assert len(sources[0].read) == len(sources[1].read) == 12
    assert not sources[0].read & sources[1].read


# ---------------------------------------------------------------- memory, kill -9, Beam

_PREPARE = """
import json, os, resource, sys
sys.path.insert(0, {repo!r})
import ml_collections
from fmjax.data import preparation
preparation.UNIT_BYTES = {unit_bytes}
config = ml_collections.ConfigDict(json.loads({config!r}))
{setup}
prepared = preparation.prepare_text(config, "mlm", workers=1)
print("ROWS", len(prepared.sources["train"]), flush=True)
"""


def _prepare_script(config, unit_bytes: int = 1 << 26, setup: str = "") -> str:
    return _PREPARE.format(
        repo=REPO, unit_bytes=unit_bytes, config=json.dumps(config.to_dict()), setup=setup
    )


def test_bounded_memory_preparation_under_a_hard_limit(tmp_path):
    """A corpus whose token lists alone would take >2x a hard memory budget prepares within it.

    The budget (RLIMIT_DATA) is what the process holds after start-up plus 72 MiB (each open
    ArrayRecord writer reserves 16 of it); thread stacks are made small (RLIMIT_STACK) so that
    they do not eat it. The control run shows
    that holding the corpus's ids in memory, as preparation did before, fails under it.
    """
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(6)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    words = rng.choice(letters, size=(2_400_000, 4))
    words[:, 3] = ord(" ")
    text = words.tobytes().decode()  # random 3-letter words: ~2 WordPiece tokens each
    lines = [text[i : i + 80] for i in range(0, len(text), 80)]
    for part in range(4):
        block = lines[part::4]
        _write_jsonl(
            tmp_path / "in" / f"p{part}.jsonl",
            ["\n".join(block[i : i + 30]) for i in range(0, len(block), 30)],
        )
    tokenizer_file = str(tmp_path / "tokenizer.json")
    tokenizer_lib.train_or_load_wordpiece(lines[:5000], 2048, tokenizer_file)
    config = _config(tmp_path / "data", f"files:{tmp_path}/in/*", tokenizer_file=tokenizer_file)
    config.model.vocab_size = 2048
    budget = 72 << 20
    limit = f"""
import tokenizers
tokenizers.Tokenizer.from_file(config.data.tokenizer_file).encode_batch(["warm up"] * 64)
def data_bytes():
    return int([l for l in open("/proc/self/status") if l.startswith("VmData")][0].split()[1]) << 10
limit = data_bytes() + {budget}
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
if os.environ.get("IN_MEMORY"):  # the old way: every token id of the corpus in Python lists
    from fmjax.data import files
    tok = tokenizers.Tokenizer.from_file(config.data.tokenizer_file)
    import glob
    ids = [tok.encode(d, add_special_tokens=False).ids
           for p in sorted(glob.glob(config.data.corpus[6:]))
           for d in files.read_documents(p, "text", files.ReadStats())]
    print("IN MEMORY FITS", flush=True)
"""
    script = _prepare_script(config, unit_bytes=1 << 20, setup=limit)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}

    def small_stacks() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_STACK, (2 << 20, 2 << 20))

    def run(**extra_env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            preexec_fn=small_stacks,
        )

    control = run(IN_MEMORY="1")
    assert "IN MEMORY FITS" not in control.stdout  # the budget is binding for the old way
    result = run()
    assert result.returncode == 0, result.stderr[-2000:]
    with open(next((tmp_path / "data").glob("files_*/mlm-*/prepared.json"))) as f:
        record = json.load(f)
    assert record["num_tokens"] * 36 > 2 * budget  # in Python lists: ~36 bytes a token


def test_kill_9_during_preparation_then_rerun_equals_uninterrupted(tmp_path, monkeypatch):
    """kill -9 mid-shard; two re-runs at once on the same folder finish it; same checksums."""
    (tmp_path / "in").mkdir()
    for part in range(6):
        _write_jsonl(tmp_path / "in" / f"p{part}.jsonl", _documents(10 + part, 60))
    tokenizer_file = _tokenizer(tmp_path)
    uninterrupted = _config(tmp_path / "a", f"files:{tmp_path}/in/*", tokenizer_file=tokenizer_file)
    slow = """
from fmjax.data import shards
close = shards.ShardWriter.close
def slow_close(self):
    import time; time.sleep(0.4)
    return close(self)
shards.ShardWriter.close = slow_close
"""
    interrupted = _config(tmp_path / "b", f"files:{tmp_path}/in/*", tokenizer_file=tokenizer_file)
    process = subprocess.Popen(
        [sys.executable, "-c", _prepare_script(interrupted, unit_bytes=1, setup=slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline and len(list((tmp_path / "b").glob("**/progress/unit-*.json"))) < 2
    ):
        time.sleep(0.02)
    time.sleep(0.3)  # inside a later unit's shard writing
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list((tmp_path / "b").glob("**/prepared.json")), "killed too late"
    done = len(list((tmp_path / "b").glob("**/progress/unit-*.json")))
    assert 2 <= done < 6

    reruns = [
        subprocess.Popen(
            [sys.executable, "-c", _prepare_script(interrupted, unit_bytes=1)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    monkeypatch.setattr(preparation, "UNIT_BYTES", 1)  # as in the subprocesses: a file a unit
    expected = preparation.prepare_text(uninterrupted, "mlm", workers=1)
    outputs = [p.communicate(timeout=120) for p in reruns]
    assert all(p.returncode == 0 for p in reruns), [err[-1500:] for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    with open(next((tmp_path / "b").glob("**/prepared.json"))) as f:
        resumed = json.load(f)
    assert resumed["num_units"] == 6
    assert _shards(resumed) == _shards(_record(expected))
    assert not list((tmp_path / "b").glob("**/*.tmp-*"))


def test_beam_direct_runner_equals_local_preparation(tmp_path, monkeypatch):
    pytest.importorskip("apache_beam")
    (tmp_path / "in").mkdir()
    for part in range(3):
        _write_jsonl(tmp_path / "in" / f"p{part}.jsonl", _documents(20 + part, 50))
    tokenizer_file = _tokenizer(tmp_path)
    local = _config(tmp_path / "local", f"files:{tmp_path}/in/*", tokenizer_file=tokenizer_file)
    beam = _config(
        tmp_path / "beam",
        f"files:{tmp_path}/in/*",
        tokenizer_file=tokenizer_file,
        beam_pipeline_options="--runner=DirectRunner --direct_num_workers=1",
    )
    monkeypatch.setattr(preparation, "UNIT_BYTES", 1)  # a file a unit: 3 Beam elements
    expected = _record(preparation.prepare_text(local, "mlm", workers=1))
    got = _record(preparation.prepare_text(beam, "mlm"))
    assert got["num_units"] == 3 and _shards(got) == _shards(expected)
