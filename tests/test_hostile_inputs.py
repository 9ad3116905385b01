"""Hostile inputs through the CLI: every user-facing failure is one stderr line naming the file/field and what
was expected, exit status 2, and no output is created or modified (the table is tests/_hostile_cases.py).

``python tests/test_hostile_inputs.py --markdown`` prints the table (case, command, outcome) as markdown.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shlex
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _hostile_cases import CASES, GMM_SYS, Case  # noqa: E402

DW4_RUN = {
    "train": {
        "steps": 4,
        "batch_size": 8,
        "n_levels": 4,
        "k": 2,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "lr_warmup": 1,
        "network": "egnn",
        "egnn": {"hidden": 8, "n_layers": 1},
    },
    "presets": {
        "quick": {
            "reference": {"n_steps": 100, "n_chains": 4, "burn_in": 20, "save_every": 10, "step_size": 0.05},
            "sample": {"n": 16, "n_bridge": 2, "mcmc_steps": 0},
        }
    },
}
MIX_RUN = {
    "train": {**DW4_RUN["train"], "network": "mlp", "width": 8, "depth": 1, "egnn": {}},
    "presets": {"quick": {"sample": {"n": 16, "n_bridge": 2, "mcmc_steps": 0}}},
}


def build_fixtures(fx: Path) -> None:
    """One tiny trained run (``trun``), one tiny pipeline run of a 2-D mixture (``prun``) and of DW4 (``drun``),
    and frames files, shared by every case (copied before a case changes them)."""
    import mdtraj
    import numpy as np
    import yaml

    from boltzdiff.cli import main
    from boltzdiff.config import TrainConfig
    from boltzdiff.systems import SYSTEMS_DIR
    from boltzdiff.train import train

    cfg = dict(steps=4, batch_size=16, n_levels=4, width=8, depth=1, k=2, n_data=64, checkpoint_every=2, lr_warmup=1)
    train(TrainConfig(system="gmm2_unbalanced", **cfg), fx / "trun", progress=False)
    for name, spec, run_yaml in (
        ("mix", GMM_SYS, MIX_RUN),
        ("dw4", (SYSTEMS_DIR / "dw4" / "system.yaml").read_text(), DW4_RUN),
    ):
        (fx / name).mkdir()
        (fx / name / "system.yaml").write_text(spec)
        (fx / name / "run.yaml").write_text(yaml.safe_dump(run_yaml))
        out = fx / ("prun" if name == "mix" else "drun")
        # untrained on purpose: its SMC may rest on one lineage, which is beside the point of these fixtures
        args = ["run", str(fx / name), "--out", str(out), "--no-progress", "--workers", "1", "--allow-degenerate"]
        assert main(args) == 0
    rng = np.random.default_rng(0)
    np.save(fx / "frames.npy", rng.normal(size=(5, 32)))
    np.save(fx / "gmm_frames.npy", rng.normal(size=(5, 2)))
    np.save(fx / "dw4_frames.npy", rng.normal(size=(5, 4, 2)) * 2)
    pdb = mdtraj.load(str(SYSTEMS_DIR / "alanine_dipeptide" / "alanine-dipeptide.pdb"))
    mdtraj.join([pdb, pdb]).save_dcd(str(fx / "aldp.dcd"))


def snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple]:
    """Every path under ``root`` (but those matching ``skip``) with its mode and, for files, a content hash."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if any(fnmatch.fnmatch(rel, g) for g in skip):
                continue
            st = p.lstat()
            digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and os.access(p, os.R_OK) else None
            out[rel] = (st.st_mode, digest)
    return out


def expand(case: Case, t: Path, fx: Path) -> list[str]:
    return shlex.split(case.argv.replace("{t}", str(t)).replace("{fx}", str(fx)))


def outcome(case: Case) -> str:
    if case.code == 0:
        what = "exit 0" + (f", warning names `{case.fragment}`" if case.fragment else "")
        what += ", stdout holds only the energies" if case.stdout_only_numbers else ""
    else:
        what = f"exit 2, one stderr line naming `{case.fragment}`, outputs untouched"
    return what + (f" (expected failure: {case.xfail})" if case.xfail else "")


def markdown() -> str:
    rows = ["| case | command | outcome |", "|---|---|---|"]
    for c in CASES:
        cmd = "boltzdiff " + c.argv.replace("{t}/", "").replace("{fx}/", "").replace("|", "\\|")
        rows.append(f"| {c.id} | `{cmd}` | {outcome(c)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown(), end="")
        sys.exit(0)
    print("usage: python tests/test_hostile_inputs.py --markdown", file=sys.stderr)
    sys.exit(2)

import pytest  # noqa: E402
import torch  # noqa: E402

from boltzdiff.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_fixtures")
    torch.set_num_threads(1)
    build_fixtures(root)
    return root


def _param(c: Case):
    marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
    return pytest.param(c, id=c.id, marks=marks)


def test_the_table_has_enough_distinct_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(case: Case, fx: Path, tmp_path: Path, capfd) -> None:
    if case.as_root_skip and os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    if case.no_cuda and torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    t = tmp_path / "case"
    t.mkdir()
    case.setup(t, fx)
    before = snapshot(t, case.writes)
    fx_before = snapshot(fx, ())
    capfd.readouterr()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc = main(expand(case, t, fx))
        out, err = capfd.readouterr()
        after = snapshot(t, case.writes)
    finally:
        for dirpath, dirs, _ in os.walk(t):
            for d in dirs:
                os.chmod(Path(dirpath) / d, 0o755)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == case.code, (rc, err[-3000:])
    if case.code == 2:
        command = expand(case, t, fx)[0]
        assert len(lines) == 1, err
        assert lines[0].startswith(f"boltzdiff {command}: error: "), lines[0]
        assert case.fragment in lines[0], lines[0]
        assert "Traceback" not in err
    else:
        said = err + "".join(str(w.message) for w in caught)
        assert case.fragment in said, said
        for w in case.writes:
            assert list(t.glob(w)), f"{w} not written"
    if case.stdout_only_numbers:
        vals = out.split()
        assert vals and len(vals) == len(out.splitlines()), out[:2000]
        [float(v) for v in vals]
    assert after == before, {
        k: (before.get(k), after.get(k))
        for k in set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]}
    }
    assert snapshot(fx, ()) == fx_before


def test_debug_reraises_with_the_traceback(tmp_path, capsys):
    from boltzdiff.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        main(["--debug", "sample", str(tmp_path / "nope"), "--n", "4", "--out", str(tmp_path / "s.npz")])
    with pytest.raises(ConfigError, match="does not exist"):  # -v keeps giving debug logging and tracebacks
        main(["-v", "sample", str(tmp_path / "nope"), "--n", "4", "--out", str(tmp_path / "s.npz")])
    assert main(["sample", str(tmp_path / "nope"), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 2
    assert capsys.readouterr().err.strip().startswith("boltzdiff sample: error:")
    assert main(["sample", "--n", "x"]) == 2  # a bad flag: one line too
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_markdown_table_lists_every_case():
    md = markdown()
    assert all(f"| {c.id} |" in md for c in CASES)
    assert md == (Path(__file__).parents[1] / "benchmarks" / "results" / "hostile_inputs.md").read_text()
