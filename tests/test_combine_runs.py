"""``sample.combine_runs: mean``: ΔF as the plain mean of the independent SMC runs' estimates."""

from __future__ import annotations

import math

import pytest

from boltzdiff.errors import ConfigError


def test_mean_of_runs_is_the_mean_with_the_standard_error_over_runs():
    from boltzdiff.analysis.weights import mean_of_runs

    m, se = mean_of_runs([3.5, 3.9, 4.1, 3.7])
    assert m == pytest.approx(3.8, abs=1e-12)
    # SD (ddof 1) of (-0.3, 0.1, 0.3, -0.1) is sqrt(0.2 / 3)
    assert se == pytest.approx(math.sqrt(0.2 / 3) / 2, abs=1e-12)
    m, se = mean_of_runs([3.5, float("nan"), 4.1])
    assert m == pytest.approx(3.8) and se == pytest.approx(0.3)
    assert math.isnan(mean_of_runs([2.0])[1])
    with pytest.raises(ValueError, match="no finite"):
        mean_of_runs([float("inf")])


def test_the_headline_becomes_the_mean_and_the_pooled_value_stays_beside_it():
    from boltzdiff.analysis.pipeline_analysis import runs_table_md
    from boltzdiff.pipeline.analyze import _mean_of_runs_headline

    res = dict(delta_f_kT=3.6, delta_f_se_kT=0.3, delta_f_runs_kT=[3.5, 3.9, 4.1, 3.7], delta_f_loo_kT=[3.6] * 4)
    _mean_of_runs_headline(res)
    assert res["delta_f_kT"] == pytest.approx(3.8) and res["delta_f_pooled_kT"] == 3.6
    assert res["delta_f_pooled_se_kT"] == 0.3 and res["delta_f_se_kT"] == pytest.approx(math.sqrt(0.2 / 3) / 2)
    assert res["delta_f_combine"] == "mean of runs"
    text = runs_table_md(res)
    assert "plain mean of the runs" in text and "pooled, ΔF 3.6 ± 0.3 kT" in text


def test_combine_runs_is_checked():
    from boltzdiff.config import SampleConfig

    assert SampleConfig.from_dict({"combine_runs": "mean"}).validate().combine_runs == "mean"
    with pytest.raises(ConfigError, match="sample.combine_runs: expected 'pooled' or 'mean', got 'median'"):
        SampleConfig.from_dict({"combine_runs": "median"}).validate()
