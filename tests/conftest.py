"""Fixtures several test modules share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny networks: one torch thread is fastest and avoids oversubscribing a busy CI machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small_ops():
    """Tiny convolutions run several times faster on one thread without oneDNN; restore both."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn


@pytest.fixture
def float64():
    """Finite differences need double precision; the default dtype is restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
