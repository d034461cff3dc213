"""Test setup: 8 simulated CPU devices, set before anything imports jax."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """Machine-level cache for prepared real corpora, so tests fetch them once per machine."""
    path = os.path.expanduser(os.environ.get("FMJAX_TEST_DATA_DIR", "~/.cache/fmjax/test-data"))
    os.makedirs(path, exist_ok=True)
    return path
