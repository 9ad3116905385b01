import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def fd_force():
    """``-dE/dx`` of ``energy: (B, d) -> (B,)`` by central differences, one coordinate at a time (float64)."""

    def f(energy, x, eps=1e-6):
        out = torch.zeros_like(x)
        for k in range(x.shape[1]):
            dx = torch.zeros_like(x)
            dx[:, k] = eps
            out[:, k] = -(energy(x + dx) - energy(x - dx)) / (2 * eps)
        return out

    return f
