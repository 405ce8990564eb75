"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


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
