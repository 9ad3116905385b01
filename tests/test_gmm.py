import math
import textwrap

import pytest
import torch

from boltzdiff import load_system
from boltzdiff.errors import ConfigError
from boltzdiff.targets.gmm import GaussianMixture


def small_gmm():
    return GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [1.5, 1.0], [0.5, -2.5]], [0.4, 0.7, 0.3])


def test_noised_log_density_matches_monte_carlo_convolution():
    """p_t(x) = E_{x0 ~ p}[N(x; alpha x0, sigma^2 I)], estimated with 2e5 exact samples."""
    gmm = small_gmm()
    gen = torch.Generator().manual_seed(0)
    x0 = gmm.sample(200_000, gen).double()
    alpha, sigma = 0.8, 0.5
    pts = torch.tensor([[-1.5, 0.2], [1.0, 0.8], [0.0, -2.0], [3.0, 3.0]], dtype=torch.float64)
    d2 = ((pts[:, None, :] - alpha * x0[None]) ** 2).sum(-1)
    dens = torch.exp(-0.5 * d2 / sigma**2) / (2 * math.pi * sigma**2)
    mc, se = dens.mean(1), dens.std(1) / math.sqrt(x0.shape[0])
    exact = torch.exp(gmm.log_prob_t(pts, alpha, sigma))
    z = (mc - exact) / se
    assert torch.all(z.abs() < 4), z  # 4 standard errors, 4 points


def test_density_integrates_to_one_on_a_grid():
    gmm = small_gmm()
    u = torch.linspace(-8, 8, 801, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], -1)
    for a, s in [(1.0, 0.0), (0.6, 0.8)]:
        p = torch.exp(gmm.log_prob_t(pts, a, s)).reshape(801, 801)
        assert float(torch.trapezoid(torch.trapezoid(p, u), u)) == pytest.approx(1.0, abs=1e-6)


def test_exact_samples_of_p_t_have_the_right_moments():
    gmm = small_gmm()
    gen = torch.Generator().manual_seed(1)
    a, s = 0.7, 0.6
    x, lab = gmm.sample_with_labels(100_000, gen, a, s)
    mean = a * (gmm.weights @ gmm.means)
    assert torch.allclose(x.mean(0), mean, atol=4 * x.std(0).max() / math.sqrt(1e5))
    freq = torch.bincount(lab, minlength=3).double() / 1e5
    se = torch.sqrt(gmm.weights * (1 - gmm.weights) / 1e5)
    assert torch.all(((freq - gmm.weights) / se).abs() < 4)


def test_force_is_minus_grad_energy_and_matches_finite_differences():
    gmm = small_gmm()
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f = gmm.force(x)
    h = 1e-6
    fd = torch.zeros_like(x)
    for j in range(2):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd[:, j] = -(gmm.energy(x + e) - gmm.energy(x - e)) / (2 * h)
    assert torch.allclose(f, fd, atol=1e-6)


def test_product_of_mixtures_matches_numerical_integration():
    p = GaussianMixture([0.7, 0.3], [[-1.0, 0.0], [1.5, 0.5]], [0.8, 0.6])
    q = GaussianMixture([0.4, 0.6], [[-0.5, 0.3], [1.0, 1.0]], [1.0, 0.5])
    pq = p.product(q)
    u = torch.linspace(-7, 7, 701, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], -1)
    lpq = p.log_prob(pts) + q.log_prob(pts)
    logZ = math.log(float(torch.trapezoid(torch.trapezoid(torch.exp(lpq).reshape(701, 701), u), u)))
    assert torch.allclose(pq.log_prob(pts), lpq - logZ, atol=1e-5)


def test_data_moments_are_exact():
    gmm = small_gmm()
    x = gmm.sample(400_000, torch.Generator().manual_seed(3)).double()
    mu, sd = gmm.data_moments()
    assert torch.allclose(mu, x.mean(0), atol=0.01)
    assert sd == pytest.approx(float(torch.sqrt(((x - mu) ** 2).mean())), rel=0.01)


def test_presets_are_as_specified():
    s = load_system("gmm40_2d")
    t = s.target
    assert (t.n_components, t.dim) == (40, 2)
    assert torch.allclose(t.std**2, torch.full((40,), math.log1p(math.e), dtype=torch.float64))
    assert float(t.means.min()) >= -40 and float(t.means.max()) <= 40
    assert torch.allclose(t.weights, torch.full((40,), 1 / 40, dtype=torch.float64))
    u = load_system("gmm2_unbalanced").target
    assert u.dim == 32 and torch.allclose(u.weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    assert torch.all(u.means[0] == 1) and torch.all(u.means[1] == -1) and torch.all(u.std == 0.25)


def write(tmp_path, text, name="system.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_user_mixture_from_yaml_file_and_folder(tmp_path):
    write(
        tmp_path,
        """
        kind: gaussian_mixture
        weights: [0.6, 0.3, 0.1]
        means: [[0, 0], [3, 0], [0, 3]]
        std: [0.5, 0.4, 0.3]
    """,
    )
    for ref in (tmp_path, tmp_path / "system.yaml", str(tmp_path / "system.yaml")):
        t = load_system(ref).target
        assert t.dim == 2 and t.n_components == 3
        assert torch.allclose(t.std, torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64))


@pytest.mark.parametrize(
    "body, match",
    [
        (
            "weights: [0.5, 0.5, 0.1]\nmeans: [[0, 0], [1, 1]]\nstd: 1",
            "'weights' has 3 entries but 'means' has 2",
        ),
        ("weights: [0.5, 0.5]\nmeans: [[0, 0], [1, 1]]\nstd: -1", "'std' must be positive"),
        ("weights: [0.5, 0.5]\nmeans: [[0, 0], [1, 1, 2]]\nstd: 1", "same length"),
        ("weights: [0.5, 0.5]\nstd: 1", "needs 'means'"),
        ("weights: [0.5, 0.5]\nmeans: [[0, 0], [1, 1]]", "exactly one of 'std' or 'variance'"),
        ("weights: [0.5, -0.5]\nmeans: [[0, 0], [1, 1]]\nstd: 1", "positive"),
        ("weights: [0.5, 0.5]\nmeans: [[0, 0], [1, 1]]\nstd: one", "expected a number"),
    ],
)
def test_bad_mixture_specs_name_the_field(tmp_path, body, match):
    p = write(tmp_path, "kind: gaussian_mixture\n" + body + "\n")
    with pytest.raises(ConfigError, match=match) as e:
        load_system(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_weights_not_summing_to_one_are_normalised_with_a_warning(tmp_path):
    p = write(tmp_path, "kind: gaussian_mixture\nweights: [2, 1]\nmeans: [[0], [1]]\nstd: 1\n")
    with pytest.warns(UserWarning, match="normalising"):
        t = load_system(p).target
    assert torch.allclose(t.weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_unknown_system_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown system 'nope'.*gmm40_2d"):
        load_system("nope")
    p = write(tmp_path, "kind: gaussian_mixture\nmeans: [[0, 0]\n")
    with pytest.raises(ConfigError, match="malformed"):
        load_system(p)
    p = write(tmp_path, "means: [[0, 0]]\nstd: 1\n")
    with pytest.raises(ConfigError, match="missing field 'kind'"):
        load_system(p)
