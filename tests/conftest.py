"""Test setup: 8 simulated CPU devices, set before anything imports jax; slow files first."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# The suite runs on 2 pytest-xdist workers, one file at a time each (pyproject.toml). Starting
# the longest files first keeps one from starting last and running on alone. Longest first, as
# measured on 2 cores; the other files follow in their usual order.
SLOWEST_FILES = (
    "test_fault_tolerance.py",
    "test_published.py",
    "test_gpt.py",
    "test_experiments.py",
    "test_multihost.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Orders the test files longest first (a stable sort: tests keep their order in a file)."""
    rank = {name: index for index, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """Machine-level cache for prepared real corpora, so tests fetch them once per machine.

    Test workers share it: preparation takes turns under a lock (fmjax.data.corpora), so a
    cold cache is prepared once.
    """
    path = os.path.expanduser(os.environ.get("FMJAX_TEST_DATA_DIR", "~/.cache/fmjax/test-data"))
    os.makedirs(path, exist_ok=True)
    return path
