"""gs:// workdirs against a local GCS emulator (tests/gcs_emulator.py, on 127.0.0.1).

Orbax/tensorstore (TENSORSTORE_GCS_HTTP_URL), etils.epath/gcsfs (STORAGE_EMULATOR_HOST) and
tensorboardX (google-cloud-storage, STORAGE_EMULATOR_HOST) all talk to the emulator here, as
they would to GCS on a pod.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import fsspec
import pytest

from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.train import trainer
from fmjax.train.workdir_lock import WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "fmjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """A fresh in-memory emulator with one bucket; the clients of this process pointed at it."""
    pytest.importorskip("gcp_storage_emulator")
    pytest.importorskip("gcsfs")
    from tensorboardX import record_writer

    # tensorboardX's GCS writer uploads its buffer again whenever it is garbage collected, even
    # after close; at interpreter exit the emulator is gone and that retries for minutes.
    record_writer.GCSRecordWriter.__del__ = lambda self: None
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), str(port), BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    environ = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (etils.epath) and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # Orbax's array writes
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no control-plane lookups
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environ.items():
            patch.setenv(key, value)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no emulator"
                time.sleep(0.2)
        fsspec.filesystem("gs").invalidate_cache()
        try:
            yield fsspec.filesystem("gs")
        finally:
            server.terminate()
            server.wait(timeout=30)


def smoke_config(data_dir: str, **train):
    config = experiment_config("bert_tiny", "smoke")
    config.data.data_dir = data_dir
    config.train.update(log_every=1, eval_every=4, **train)
    config.checkpoint.every_steps = 2
    return config


def _train_records(text: str) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in records if r["split"] == "train"]


def test_a_gs_workdir_trains_and_resumes_exactly(gcs, shared_data_dir, tmp_path):
    local = tmp_path / "local"
    trainer.train(smoke_config(shared_data_dir, num_steps=4), str(local))
    workdir = f"gs://{BUCKET}/runs/bert"
    trainer.train(smoke_config(shared_data_dir, num_steps=2), workdir)
    trainer.train(smoke_config(shared_data_dir, num_steps=4), workdir)  # resumes from step 2

    expected = _train_records((local / "metrics.jsonl").read_text())
    got = _train_records(gcs.cat_file(f"{BUCKET}/runs/bert/metrics.jsonl").decode())
    assert got == expected  # appended across the resume, bit-identical to one run
    names = {path.rsplit("/", 1)[-1] for path in gcs.ls(f"{BUCKET}/runs/bert")}
    assert {"config.json", "manifest.json", "metrics.jsonl", "checkpoints", "tensorboard"} <= names
    assert ".lock" not in names  # released at the end of each run
    steps = {p.rsplit("/", 1)[-1] for p in gcs.ls(f"{BUCKET}/runs/bert/checkpoints")}
    assert {"2", "4"} <= steps
    assert gcs.exists(f"{BUCKET}/runs/bert/checkpoints/4/commit_success.txt")
    assert len(gcs.ls(f"{BUCKET}/runs/bert/tensorboard")) == 2  # one event file per run
    manifest = json.loads(gcs.cat_file(f"{BUCKET}/runs/bert/manifest.json"))
    assert manifest["seed"] == 0


def test_the_lock_object_refuses_a_second_run_until_its_lease_runs_out(gcs):
    workdir = f"gs://{BUCKET}/runs/locked"
    lock_name = f"{BUCKET}/runs/locked/.lock"
    with WorkdirLock(workdir, lease_seconds=30):
        holder = json.loads(gcs.cat_file(lock_name))
        with pytest.raises(FileExistsError):  # created only if absent (ifGenerationMatch=0)
            gcs.pipe_file(lock_name, b"{}", mode="create")
        with pytest.raises(ConfigError, match=r"in use by another fmjax run .*renewed \d+s ago"):
            WorkdirLock(workdir).__enter__()
    assert not gcs.exists(lock_name)  # released

    # A run killed with -9 leaves its lock object behind, no longer renewed.
    stale = {**holder, "renewed": time.time() - 31}
    gcs.pipe_file(lock_name, json.dumps(stale).encode())
    with WorkdirLock(workdir, lease_seconds=30):
        assert json.loads(gcs.cat_file(lock_name))["owner"] != holder["owner"]
    assert not gcs.exists(lock_name)


def test_the_lock_is_renewed_and_a_lost_lock_stops_the_run(gcs):
    # The renewer stops the run through Python's SIGINT handler (_thread.interrupt_main), which a
    # shell disables for a job it starts in the background (nohup ... &): install it for the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        workdir = f"gs://{BUCKET}/runs/renewed"
        lock_name = f"{BUCKET}/runs/renewed/.lock"
        with pytest.raises(KeyboardInterrupt):
            with WorkdirLock(workdir, lease_seconds=1.0):
                first = json.loads(gcs.cat_file(lock_name))["renewed"]
                # renewed every 0.2 s; polled with a generous deadline (a loaded machine is slow)
                deadline = time.time() + 60
                while json.loads(gcs.cat_file(lock_name))["renewed"] <= first:
                    assert time.time() < deadline, "the lock was never renewed"
                    time.sleep(0.1)
                # Another run claims the lock, and re-claims it as its own renewer would: a claim
                # that lands between this run's read and its renewal write is overwritten once.
                for _ in range(600):  # the renewer sees it and interrupts this thread (<= 60 s)
                    gcs.pipe_file(lock_name, json.dumps({"owner": "another run"}).encode())
                    time.sleep(0.1)
        assert json.loads(gcs.cat_file(lock_name))["owner"] == "another run"  # not deleted
    finally:
        signal.signal(signal.SIGINT, previous)
