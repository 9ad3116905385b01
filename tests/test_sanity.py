"""The sanity gates flag a degenerate run and pass a healthy one."""

import math

import numpy as np
import pytest

from boltzdiff.analysis.sanity import SanityLimits, energy_range, sanity_flags

HEALTHY = dict(
    n_lineages=759, ess_final_step=0.39, ess=0.39, mean_energy_kT=-22.7, reference_energy_range_kT=[-27.0, -15.0]
)


def test_a_healthy_run_has_no_flag():
    assert sanity_flags(HEALTHY) == []
    assert sanity_flags({}) == []  # nothing measured, nothing claimed


def test_one_ancestor_with_resampled_weights_is_flagged_although_ess_reads_one():
    bad = dict(HEALTHY, n_lineages=1, ess=1.0, ess_final_step=2e-5, mean_energy_kT=2.5e5)
    flags = sanity_flags(bad)
    assert len(flags) == 3
    assert any("n_lineages = 1" in f for f in flags)
    assert any("ess_final_step" in f for f in flags)
    assert any("far outside" in f for f in flags)


@pytest.mark.parametrize(
    "key, value, n",
    [
        ("n_lineages", 2, 0),
        ("n_lineages", 1, 1),
        ("ess_final_step", 1e-3, 0),
        ("ess_final_step", 9e-4, 1),
        ("ess_final_step", float("nan"), 1),
        ("ess", float("nan"), 1),
        ("mean_energy_kT", -39.0, 0),  # within one range (12 kT) of the reference's
        ("mean_energy_kT", -39.1, 1),
        ("mean_energy_kT", -3.0, 0),
        ("mean_energy_kT", -2.9, 1),
        ("mean_energy_kT", math.inf, 1),
    ],
)
def test_each_limit_is_where_it_is_documented(key, value, n):
    assert len(sanity_flags(dict(HEALTHY, **{key: value}))) == n


def test_limits_can_be_set_and_range_ignores_non_finite():
    assert sanity_flags(dict(HEALTHY, n_lineages=3), SanityLimits(min_lineages=4))
    assert energy_range(np.array([1.0, np.inf, -2.0, np.nan])) == (-2.0, 1.0)
    with pytest.raises(ValueError):
        energy_range(np.array([np.nan]))
