"""Fixtures shared by the test files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The test folders mirror the package (tests/score, tests/sampling, ..., the end-to-end runs in
# tests/e2e). Test modules share helpers by module name (``from test_stages import
# write_params``), as pytest lets modules of one folder do: every folder is on the import path.
sys.path[:0] = [str(d) for d in sorted(Path(__file__).resolve().parent.iterdir())
                if d.is_dir() and d.name != "__pycache__"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (`-n 2`, README) each worker, and every process a test starts (the
    # pipeline's stages inherit the environment), runs one thread: two workers with two
    # OpenMP threads each on 2 cores only add synchronisation and make small ops several times slower.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for a test on small tensors: on a busy 2-core machine a second OpenMP
    thread only adds synchronisation, which made such tests several times slower. fork_rng
    keeps a test's seeding of the global generator from leaking into the next one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end tests (marked slow) first, the README-table test (the longest) leading:
    pytest-xdist's loadscope hands out scopes in collection order, and long scopes collected
    last left one worker idle for minutes while the other ran them (longest first balances the
    two). The order within a file is kept."""
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(item.nodeid.split("::")[0], len(first_seen))

    def key(item: pytest.Item) -> tuple[bool, bool, int]:
        slow, path = item.get_closest_marker("slow") is not None, item.nodeid.split("::")[0]
        return (not slow, not path.endswith("test_readme_recipes.py"), -first_seen[path] if slow else 0)

    items.sort(key=key)  # stable
