import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared: intra-op threads only contend (25x slower on small tensors)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
