"""Strict system specs (unknown fields, scalar types, finiteness, ranges), the shared schema helpers, and
``dihedral_of`` against mdtraj on alanine dipeptide and its mirror image."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import mdtraj
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boltzdiff.errors import ConfigError
from boltzdiff.schema import check_keys, to_int, to_number
from boltzdiff.systems import SYSTEMS_DIR, System, dihedral_of, load_system
from boltzdiff.systems.builders import DOUBLE_WELL_FIELDS, GAUSSIAN_MIXTURE_FIELDS, LENNARD_JONES_FIELDS

GMM = "kind: gaussian_mixture\nweights: [0.5, 0.5]\nmeans: [[0, 0], [1, 1]]\nstd: 0.3\n"
DW = "kind: double_well\nn_particles: 4\nspatial_dim: 2\na: 0.0\nb: -4.0\nc: 0.9\nd0: 4.0\ntemperature: 1.0\n"
LJ = "kind: lennard_jones\nn_particles: 13\ntemperature: 1.0\n"


def _with(base: str, field: str, value: str) -> str:
    """``base`` with ``field: value`` replacing that field's line (or added)."""
    lines = [ln for ln in base.splitlines() if not ln.startswith(field + ":")]
    return "\n".join([*lines, f"{field}: {value}"]) + "\n"


def _load_text(tmp_path: Path, text: str) -> System:
    p = tmp_path / "system.yaml"
    p.write_text(textwrap.dedent(text))
    return load_system(p)


BAD_SPECS = [
    (GMM.replace("weights:", "weigths:"), "unknown field 'weigths'; did you mean 'weights'?"),
    (GMM + "stdd: 1\n", "unknown field 'stdd'; did you mean 'std'?"),
    (GMM + "dim: two\n", "field 'dim' expected an integer, got 'two'"),
    (GMM + "dim: 1000000000\n", "field 'dim' must be an integer >= 1 and <= 100000, got 1000000000"),
    (GMM + "dim: 0\n", "field 'dim' must be an integer >= 1"),
    (_with(GMM, "std", ".inf"), "field 'std' must be a finite number"),
    (_with(GMM, "std", "[0.3, .nan]"), "field 'std' must be a finite number"),
    (_with(GMM, "std", "hot"), "field 'std' expected a number"),
    (_with(GMM, "means", "[[0, 0], [1, x]]"), "field 'means' expected a number, got 'x'"),
    (_with(GMM, "weights", "[0.5, true]"), "field 'weights' expected a number (or 'softplus(a)'), got True"),
    (_with(GMM, "std", "softplus(abc)"), "field 'std' expected a number, got 'abc'"),
    (
        "kind: gaussian_mixture\ndim: 2\nrandom_means: {n_componets: 4, low: 0, high: 1}\nstd: 1\n",
        "random_means: unknown field 'n_componets'; did you mean 'n_components'?",
    ),
    (
        "kind: gaussian_mixture\ndim: 100000\nrandom_means: {n_components: 100000, low: 0, high: 1}\nstd: 1\n",
        "'random_means' asks for 100000 x 100000 coordinates",
    ),
    (
        "kind: gaussian_mixture\ndim: 2\nrandom_means: {n_components: 4, low: -.inf, high: 1}\nstd: 1\n",
        "field 'low' must be a finite number",
    ),
    (_with(DW, "temperature", "hot"), "field 'temperature' expected a number, got 'hot'"),
    (_with(DW, "temperature", ".inf"), "field 'temperature' must be a finite number, got inf"),
    (_with(DW, "temperature", "0"), "field 'temperature' must be > 0, got 0"),
    (_with(DW, "temperature", "-1.5"), "field 'temperature' must be > 0, got -1.5"),
    (_with(DW, "temperature", "true"), "field 'temperature' expected a number, got True"),
    (_with(DW, "n_particles", "1000000000"), "field 'n_particles' must be an integer >= 2 and <= 100000"),
    (_with(DW, "n_particles", "2.5"), "field 'n_particles' expected an integer, got 2.5"),
    (_with(DW, "n_particles", "four"), "field 'n_particles' expected an integer, got 'four'"),
    (_with(DW, "d0", "[1]"), "field 'd0' expected a number, got [1]"),
    (DW.replace("spatial_dim:", "spatial_dims:"), "unknown field 'spatial_dims'; did you mean 'spatial_dim'?"),
    (DW.replace("d0: 4.0\n", ""), "missing field 'd0'"),
    (LJ + "oscilator_scale: 1\n", "unknown field 'oscilator_scale'; did you mean 'oscillator_scale'?"),
    (LJ + "eps: -1\n", "field 'eps' must be > 0, got -1"),
    (LJ + "spatial_dim: 4\n", "field 'spatial_dim' must be an integer >= 1 and <= 3, got 4"),
    (LJ + "initial_positions: [[0, 0, 0]]\n", "field 'initial_positions' must hold 13 x 3 coordinates"),
    (LJ + "initial_positions: nowhere.pdb\n", "field 'initial_positions': file"),
    (GMM.replace("gaussian_mixture", "gausian_mixture"), "field 'kind' is 'gausian_mixture'; did you mean"),
    (GMM + "name: [1]\n", "field 'name' expected a non-empty string"),
    (GMM + "variants: [1, 2]\n", "field 'variants' expected a mapping"),
    ("kind: openmm\ntemperature: 300\nforcefeild: [amber99sbildn.xml]\n", "did you mean 'forcefield'?"),
    ("kind: openmm\ntemperature: warm\npdb: a.pdb\n", "field 'temperature' expected a number, got 'warm'"),
]


@pytest.mark.parametrize("text, fragment", BAD_SPECS)
def test_bad_specs_are_refused_in_one_line(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as e:
        _load_text(tmp_path, text)
    msg = str(e.value)
    assert fragment in msg, msg
    assert "\n" not in msg and str(tmp_path / "system.yaml") in msg


def test_yaml_strings_that_are_numbers_are_read_as_numbers(tmp_path):
    # PyYAML reads 1e1 (no dot) as a string; every number field converts it
    s = _load_text(tmp_path, _with(_with(DW, "temperature", "1e1"), "d0", "4e0"))
    assert s.temperature == 10.0 and s.target.temperature == 10.0 and s.target.d0 == 4.0
    g = _load_text(tmp_path, "kind: gaussian_mixture\ndim: 1e1\nmeans: [1e0, -1e0]\nstd: 2.5e-1\n")
    assert g.target.dim == 10 and float(g.target.std[0]) == 0.25 and float(g.target.means[1, 0]) == -1.0
    lj = _load_text(tmp_path, LJ + "eps: 1e0\n")
    assert lj.target.eps == 1.0


def test_schema_helpers():
    assert to_number("1e1", "x", "w") == 10.0 and to_number(3, "x", "w") == 3.0
    assert to_int("1e1", "n", "w") == 10 and to_int(4.0, "n", "w") == 4
    with pytest.raises(ConfigError, match=r"^w: field 'n' expected an integer, got True$"):
        to_int(True, "n", "w")
    with pytest.raises(ConfigError, match=r"must be a finite number"):
        to_number(float("nan"), "x", "w")
    with pytest.raises(ConfigError, match=r"^w: unknown field 'wieght'; did you mean 'weight'\?$"):
        check_keys({"wieght": 1}, ["weight", "height"], "w")
    with pytest.raises(ConfigError, match=r"unknown field 'zzz'; expected one of: height, weight$"):
        check_keys({"zzz": 1}, ["weight", "height"], "w")


def test_shipped_specs_still_load_to_the_same_numbers():
    g = load_system("gmm40_2d").target
    assert g.n_components == 40 and float(g.std[0]) ** 2 == pytest.approx(np.log1p(np.e), rel=1e-12)
    d = load_system("dw4")
    assert (d.target.a, d.target.b, d.target.c, d.target.d0, d.temperature) == (0.0, -4.0, 0.9, 4.0, 1.0)


# ------------------------------------------------------------------------------------------------------------
# property: random mappings of known fields with junk values load or raise a one-line ConfigError
# ------------------------------------------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["1e1", "-2", ".5", "inf", "nan", "softplus(1)", "softplus(x)", "0", "3"]),
)
_junk = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.lists(st.lists(_scalars, max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(["n_components", "low", "high", "seed", "x"]), _scalars, max_size=4),
)
_KINDS = {
    "gaussian_mixture": sorted(GAUSSIAN_MIXTURE_FIELDS - {"kind"}) + ["weigths"],
    "double_well": sorted(DOUBLE_WELL_FIELDS - {"kind"}) + ["temprature"],
    "lennard_jones": sorted(LENNARD_JONES_FIELDS - {"kind"}),
}


@st.composite
def _specs(draw):
    kind = draw(st.sampled_from(sorted(_KINDS)))
    spec = draw(st.dictionaries(st.sampled_from(_KINDS[kind]), _junk, max_size=len(_KINDS[kind])))
    return {"kind": kind, **spec}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_specs())
def test_random_specs_load_or_raise_one_line_config_errors(spec):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "system.yaml"
        p.write_text(yaml.safe_dump(spec))
        try:
            s = load_system(p)
        except ConfigError as e:
            msg = str(e)
            assert "\n" not in msg and str(p) in msg, msg
        else:
            assert isinstance(s, System) and s.kind == spec["kind"]


# ------------------------------------------------------------------------------------------------------------
# dihedral_of
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aldp():
    s = load_system("alanine_dipeptide", variant="vacuum")
    yield s
    s.target.close()


@pytest.mark.parametrize("pdb", ["alanine-dipeptide.pdb", "alanine-dipeptide-phi-pos.pdb"])
def test_dihedral_of_matches_mdtraj_phi_and_maps_mirror_images_back(aldp, pdb):
    traj = mdtraj.load(str(SYSTEMS_DIR / "alanine_dipeptide" / pdb))
    _, phi_md = mdtraj.compute_phi(traj)
    phi_md = phi_md[:, 0]
    x = traj.xyz.astype(np.float64)
    phi = dihedral_of(aldp, x, "phi")
    assert phi.shape == (1,) and np.allclose(phi, phi_md, atol=1e-5)
    assert np.all((-np.pi <= phi) & (phi < np.pi))
    mirror = -x  # the point inversion: the other hand, dihedrals of the opposite sign
    _, phi_mirror_md = mdtraj.compute_phi(mdtraj.Trajectory(mirror.astype(np.float32), traj.topology))
    assert np.allclose(phi_mirror_md[:, 0], -phi_md, atol=1e-5)
    both = np.concatenate([x, mirror]).reshape(2, -1)  # flat (F, 3 n) input
    assert np.allclose(dihedral_of(aldp, both, "phi"), [phi_md[0], phi_md[0]], atol=1e-5)
    assert np.allclose(dihedral_of(aldp, both, "phi", mirror=False), [phi_md[0], -phi_md[0]], atol=1e-5)
    if pdb == "alanine-dipeptide.pdb":
        assert phi[0] == pytest.approx(aldp.spec["reference_dihedrals"]["phi"], abs=1e-3)
    else:
        assert phi[0] > 0


def test_dihedral_of_unknown_name(aldp):
    with pytest.raises(ConfigError, match="no dihedral 'phii'.*did you mean 'phi'"):
        dihedral_of(aldp, aldp.positions[None], "phii")
