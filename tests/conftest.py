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
