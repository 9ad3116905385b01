"""Weighted training data (``train.data_log_weights``): each batch draws rows in proportion to exp(log w)."""

import numpy as np
import pytest
import torch

from boltzdiff.config import TrainConfig
from boltzdiff.data import batch_indices, load_log_weights, weighted_view
from boltzdiff.errors import ConfigError


def test_batches_draw_rows_in_proportion_to_their_weights():
    """Row frequencies over 40 000 draws match softmax(log w) (binomial z-scores below 5)."""
    log_w = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)) + 3.0  # any offset
    probs = torch.softmax(log_w, 0)
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    counts = torch.bincount(torch.cat([batch_indices(4, 400, gen, probs) for _ in range(n // 400)]), minlength=4)
    p = probs.numpy()
    z = (counts.numpy() - n * p) / np.sqrt(n * p * (1 - p))
    assert np.abs(z).max() < 5, z


def test_unweighted_batches_are_the_uniform_draws_of_before():
    """Without weights the indices are exactly ``torch.randint``'s from the same generator state (so runs without
    weights reproduce bit for bit)."""
    a = batch_indices(100, 32, torch.Generator().manual_seed(3))
    b = torch.randint(0, 100, (32,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    x = torch.randn(5, 2)
    assert weighted_view(x, None, 0) is x


def test_bad_log_weight_files_get_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data_log_weights: file .* does not exist"):
        load_log_weights(tmp_path / "missing.npy", 10)
    np.save(tmp_path / "short.npy", np.zeros(9))
    with pytest.raises(ConfigError, match=r"holds 9 values; expected 10, one per data row"):
        load_log_weights(tmp_path / "short.npy", 10)
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan]))
    with pytest.raises(ConfigError, match="non-finite"):
        load_log_weights(tmp_path / "nan.npy", 2)
    with pytest.raises(ConfigError, match="data_log_weights"):
        TrainConfig(system="gmm40_2d", data_log_weights=str(tmp_path / "short.npy")).validate()


def test_training_takes_its_data_statistics_and_batches_from_the_weighted_rows(tmp_path):
    """Rows at (+3, 0) and (-3, 0), those at -3 weighted e^-40: the saved model's data mean is (+3, 0) (the
    unweighted mean would be (0, 0)), and the loss still trains."""
    from boltzdiff.train import load_run, train

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([3.0, 0.0], 0.1, (200, 2)), rng.normal([-3.0, 0.0], 0.1, (200, 2))])
    log_w = np.concatenate([np.zeros(200), np.full(200, -40.0)])
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "w.npy", log_w)
    cfg = TrainConfig(
        system="gmm40_2d",
        data=str(tmp_path / "x.npy"),
        data_log_weights=str(tmp_path / "w.npy"),
        steps=3,
        batch_size=16,
        n_levels=8,
        width=8,
        depth=1,
        checkpoint_every=3,
        lr_warmup=1,
    )
    train(cfg, tmp_path / "r", progress=False)
    mu = load_run(tmp_path / "r").model.mu.detach().numpy()
    assert np.allclose(mu, [3.0, 0.0], atol=0.05), mu
