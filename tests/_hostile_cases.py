"""The table of hostile inputs that tests/test_hostile_inputs.py runs through the CLI.

Each row: an id, a setup that builds files under the case's folder, the command line (``{t}``: the case's
folder, ``{fx}``: the shared fixtures, read only), the expected exit status, a fragment the one stderr line
must hold, and the paths (globs under ``{t}``) the command documents it writes; everything else under ``{t}``
must be left as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Setup = Callable[[Path, Path], None]

GARBAGE = b"\x00\x13not a file of this format\xff" * 8

GMM_SYS = "kind: gaussian_mixture\nweights: [0.7, 0.3]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n"
DW4_SYS = "kind: double_well\nn_particles: 4\nspatial_dim: 2\na: 0.0\nb: -4.0\nc: 0.9\nd0: 4.0\ntemperature: {temp}\n"
ALDP_SYS = "kind: openmm\npdb: {pdb}\ntemperature: 300.0\nforcefield: [amber99sbildn.xml]\nenergy_cap: {cap}\n"


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup
    argv: str
    code: int
    fragment: str
    writes: tuple[str, ...] = ()
    xfail: str | None = None
    as_root_skip: bool = False  # root ignores permissions: the case cannot fail for a root user
    stdout_only_numbers: bool = False  # stdout holds nothing but one number a line (energies)
    no_cuda: bool = False  # only where torch sees no CUDA device


def ops(*fns: Setup) -> Setup:
    def run(t: Path, fx: Path) -> None:
        for f in fns:
            f(t, fx)

    return run


def cp(name: str, dest: str | None = None) -> Setup:
    """Copy the shared fixture ``name`` (a folder or file) to ``{t}/dest``."""

    def run(t: Path, fx: Path) -> None:
        src, dst = fx / name, t / (dest or name)
        shutil.copytree(src, dst, symlinks=True) if src.is_dir() else shutil.copy2(src, dst)

    return run


def put(rel: str, content: bytes | str) -> Setup:
    def run(t: Path, fx: Path) -> None:
        p = t / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        text = content.replace("{fx}", str(fx)) if isinstance(content, str) else content
        p.write_bytes(text.encode() if isinstance(text, str) else text)

    return run


def cut(rel: str) -> Setup:
    """Truncate a file to half its length."""

    def run(t: Path, fx: Path) -> None:
        p = t / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    return run


def rm(rel: str) -> Setup:
    return lambda t, fx: (t / rel).unlink()


def mkdir(rel: str, mode: int | None = None) -> Setup:
    def run(t: Path, fx: Path) -> None:
        (t / rel).mkdir(parents=True, exist_ok=True)
        if mode is not None:
            os.chmod(t / rel, mode)

    return run


def nothing(t: Path, fx: Path) -> None:
    return None


TRUN = cp("trun")
PRUN = cp("prun")
DRUN = cp("drun")
FRAMES = cp("frames.npy")  # 5 frames of gmm2_unbalanced (32 coordinates)
DW4_FRAMES = cp("dw4_frames.npy")
SAMPLE = "sample {t}/trun --n 8 --out {t}/s.npz --no-progress"
TRAIN_RESUME = "train --config {t}/cfg.yaml --out {t}/trun --resume --no-progress"
RUN_P = "run {fx}/mix --out {t}/prun --no-progress --workers 1"
RUN_D = "run {fx}/dw4 --out {t}/drun --no-progress --workers 1"


def resume_cfg(**changes: object) -> Setup:
    """``{t}/cfg.yaml``: the fixture run's own config.yaml with ``changes``."""

    def run(t: Path, fx: Path) -> None:
        import yaml

        cfg = yaml.safe_load((fx / "trun" / "config.yaml").read_text())
        cfg.update(changes)
        (t / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    return run


def sysfile(rel: str, text: str) -> Setup:
    return put(rel, text)


def aldp(cap: str = "100000") -> Setup:
    def run(t: Path, fx: Path) -> None:
        from boltzdiff.systems import SYSTEMS_DIR

        pdb = SYSTEMS_DIR / "alanine_dipeptide" / "alanine-dipeptide.pdb"
        (t / "aldp.yaml").write_text(ALDP_SYS.format(pdb=pdb, cap=cap))

    return run


def _e(id: str, setup: Setup, argv: str, frag: str, **kw: object) -> Case:
    return Case(id, setup, argv, 2, frag, **kw)  # type: ignore[arg-type]


CASES: list[Case] = [
    # ---- run directories of `boltzdiff train`: sample
    _e("sample-model-garbage", ops(TRUN, put("trun/model.pt", GARBAGE)), SAMPLE, "model.pt"),
    _e("sample-model-truncated", ops(TRUN, cut("trun/model.pt")), SAMPLE, "model.pt"),
    _e("sample-ckpt-garbage", ops(TRUN, rm("trun/model.pt"), put("trun/ckpt.pt", GARBAGE)), SAMPLE, "ckpt.pt"),
    _e("sample-ckpt-truncated", ops(TRUN, rm("trun/model.pt"), cut("trun/ckpt.pt")), SAMPLE, "ckpt.pt"),
    _e("sample-config-malformed", ops(TRUN, put("trun/config.yaml", "steps: [4,\n")), SAMPLE, "config.yaml"),
    _e("sample-config-not-mapping", ops(TRUN, put("trun/config.yaml", "- 1\n- 2\n")), SAMPLE, "config.yaml"),
    _e("sample-config-bad-field", ops(TRUN, put("trun/config.yaml", "steps: many\n")), SAMPLE, "'steps'"),
    _e("sample-no-model", ops(TRUN, rm("trun/model.pt"), rm("trun/ckpt.pt")), SAMPLE, "no trained model"),
    _e("sample-missing-run-dir", nothing, SAMPLE, "does not exist"),
    _e("sample-n-zero", TRUN, "sample {t}/trun --n 0 --out {t}/s.npz", "--n: expected"),
    _e("sample-n-negative", TRUN, "sample {t}/trun --n -3 --out {t}/s.npz", "--n: expected"),
    _e("sample-n-word", TRUN, "sample {t}/trun --n many --out {t}/s.npz", "--n"),
    _e("sample-out-is-dir", ops(TRUN, mkdir("s.npz")), SAMPLE, "--out"),
    _e("sample-out-under-file", ops(TRUN, put("f", "x")), "sample {t}/trun --n 8 --out {t}/f/s.npz", "--out"),
    _e(
        "sample-out-unwritable",
        ops(TRUN, mkdir("ro", 0o500)),
        "sample {t}/trun --n 8 --out {t}/ro/s.npz",
        "--out",
        as_root_skip=True,
    ),
    _e("sample-device-tpu", TRUN, SAMPLE + " --device tpu", "--device"),
    _e("sample-device-cuda7", TRUN, SAMPLE + " --device cuda:7", "--device"),
    _e("sample-device-cuda-absent", TRUN, SAMPLE + " --device cuda", "--device", no_cuda=True),
    _e("sample-unknown-flag", TRUN, SAMPLE + " --particles 8", "unrecognized arguments: --particles"),
    Case("sample-ok", TRUN, SAMPLE, 0, "", writes=("s.npz", "s.json")),
    Case("sample-device-cpu-ok", TRUN, SAMPLE + " --device cpu", 0, "", writes=("s.npz", "s.json")),
    # ---- compose
    _e(
        "compose-model-garbage",
        ops(TRUN, put("trun/model.pt", GARBAGE)),
        "compose {t}/trun {t}/trun --op product --n 8 --out {t}/c.npz",
        "model.pt",
    ),
    _e(
        "compose-weights-word",
        TRUN,
        "compose {t}/trun {t}/trun --op mixture --weights a,b --n 8 --out {t}/c.npz",
        "--weights",
    ),
    # ---- evaluate (the loading lives in boltzdiff/train.py load_run)
    _e("evaluate-n-chains-zero", TRUN, "evaluate {t}/trun --n-chains 0", "--n-chains"),
    _e("evaluate-model-garbage", ops(TRUN, put("trun/model.pt", GARBAGE)), "evaluate {t}/trun", "model.pt"),
    _e(
        "evaluate-config-malformed",
        ops(TRUN, put("trun/config.yaml", "steps: [4,\n")),
        "evaluate {t}/trun",
        "config.yaml",
    ),
    _e("evaluate-missing-run-dir", nothing, "evaluate {t}/nope", "does not exist"),
    # ---- train
    _e("train-resume-ckpt-garbage", ops(TRUN, resume_cfg(), put("trun/ckpt.pt", GARBAGE)), TRAIN_RESUME, "ckpt.pt"),
    _e("train-resume-ckpt-truncated", ops(TRUN, resume_cfg(), cut("trun/ckpt.pt")), TRAIN_RESUME, "ckpt.pt"),
    _e(
        "train-resume-config-malformed",
        ops(TRUN, resume_cfg(), put("trun/config.yaml", "steps: [4,\n")),
        TRAIN_RESUME,
        "config.yaml",
    ),
    _e(
        "train-resume-config-not-mapping",
        ops(TRUN, resume_cfg(), put("trun/config.yaml", "just a string\n")),
        TRAIN_RESUME,
        "config.yaml",
    ),
    _e("train-resume-other-n-levels", ops(TRUN, resume_cfg(n_levels=8)), TRAIN_RESUME, "n_levels"),
    _e("train-resume-other-width", ops(TRUN, resume_cfg(width=12)), TRAIN_RESUME, "width"),
    _e("train-config-malformed", put("c.yaml", "steps: [4,\n"), "train --config {t}/c.yaml --out {t}/o", "c.yaml"),
    _e("train-config-not-mapping", put("c.yaml", "- steps\n"), "train --config {t}/c.yaml --out {t}/o", "c.yaml"),
    _e("train-config-steps-many", put("c.yaml", "steps: many\n"), "train --config {t}/c.yaml --out {t}/o", "'steps'"),
    _e("train-config-unknown-key", put("c.yaml", "stepz: 4\n"), "train --config {t}/c.yaml --out {t}/o", "steps"),
    _e("train-config-missing", nothing, "train --config {t}/c.yaml --out {t}/o", "c.yaml"),
    _e("train-out-is-file", put("o", "x"), "train --steps 2 --out {t}/o", "--out"),
    _e("train-out-under-file", put("f", "x"), "train --steps 2 --out {t}/f/o", "--out"),
    _e("train-out-unwritable", mkdir("ro", 0o500), "train --steps 2 --out {t}/ro/o", "--out", as_root_skip=True),
    _e("train-device-tpu", nothing, "train --steps 2 --out {t}/o --device tpu", "--device"),
    _e("train-device-cuda7", nothing, "train --steps 2 --out {t}/o --device cuda:7", "--device"),
    _e("train-device-cuda-absent", nothing, "train --steps 2 --out {t}/o --device cuda", "--device", no_cuda=True),
    _e("train-unknown-system", nothing, "train --system gmm2_unbalancd --steps 2 --out {t}/o", "gmm2_unbalanced"),
    _e("train-config-device-tpu", put("c.yaml", "device: tpu\n"), "train --config {t}/c.yaml --out {t}/o", "device"),
    _e("train-batch-size-zero", nothing, "train --batch-size 0 --out {t}/o", "--batch-size"),
    _e("train-steps-word", nothing, "train --steps many --out {t}/o", "--steps"),
    _e("train-steps-zero", nothing, "train --steps 0 --out {t}/o", "--steps"),
    # ---- run (pipeline directories)
    _e("run-samples-garbage", ops(PRUN, put("prun/samples.npz", GARBAGE)), RUN_P, "samples.npz"),
    _e("run-samples-truncated", ops(PRUN, cut("prun/samples.npz")), RUN_P, "samples.npz"),
    _e("run-model-garbage", ops(PRUN, rm("prun/samples.npz"), put("prun/train/model.pt", GARBAGE)), RUN_P, "model.pt"),
    _e("run-pipeline-json-malformed", ops(PRUN, put("prun/pipeline.json", '{"system": ')), RUN_P, "pipeline.json"),
    _e("run-pipeline-json-list", ops(PRUN, put("prun/pipeline.json", "[1, 2]")), RUN_P, "pipeline.json"),
    _e(
        "run-reference-positions-garbage",
        ops(DRUN, put("drun/reference/positions.npy", GARBAGE)),
        RUN_D,
        "positions.npy",
    ),
    _e("run-workers-zero", nothing, "run {fx}/mix --out {t}/o --workers 0", "--workers"),
    _e("run-workers-negative", nothing, "run {fx}/mix --out {t}/o --workers -2", "--workers"),
    _e("run-device-tpu", nothing, "run {fx}/mix --out {t}/o --device tpu", "--device"),
    _e("run-device-cuda7", nothing, "run {fx}/mix --out {t}/o --device cuda:7", "--device"),
    _e("run-device-cuda-absent", nothing, "run {fx}/mix --out {t}/o --device cuda", "--device", no_cuda=True),
    _e("run-out-is-file", put("o", "x"), "run {fx}/mix --out {t}/o", "--out"),
    _e("run-out-under-file", put("f", "x"), "run {fx}/mix --out {t}/f/o", "--out"),
    _e("run-unknown-system", nothing, "run dw5 --out {t}/o", "dw4"),
    _e(
        "run-yaml-train-5",
        ops(put("s/system.yaml", GMM_SYS), put("s/run.yaml", "train: 5\n")),
        "run {t}/s --out {t}/o",
        "run.yaml",
    ),
    _e(
        "run-yaml-malformed",
        ops(put("s/system.yaml", GMM_SYS), put("s/run.yaml", "train: {steps: 4\n")),
        "run {t}/s --out {t}/o",
        "run.yaml",
    ),
    _e(
        "run-yaml-not-mapping",
        ops(put("s/system.yaml", GMM_SYS), put("s/run.yaml", "- train\n")),
        "run {t}/s --out {t}/o",
        "run.yaml",
    ),
    _e(
        "run-yaml-steps-many",
        ops(put("s/system.yaml", GMM_SYS), put("s/run.yaml", "train: {steps: many}\n")),
        "run {t}/s --out {t}/o",
        "'steps'",
    ),
    _e(
        "run-redo-samples-garbage",
        ops(PRUN, put("prun/samples.npz", GARBAGE)),
        RUN_P + " --redo analyze",
        "samples.npz",
    ),
    _e("run-redo-not-a-run-dir", mkdir("o"), "run {fx}/mix --out {t}/o --redo train", "no pipeline.json"),
    _e("run-other-system", PRUN, "run {fx}/dw4 --out {t}/prun", "holds a run of system"),
    # ---- pool
    _e("pool-samples-garbage", ops(PRUN, put("prun/samples.npz", GARBAGE)), "pool {t}/prun", "samples.npz"),
    _e("pool-samples-json-garbage", ops(PRUN, put("prun/samples.json", "{")), "pool {t}/prun", "samples.json"),
    _e("pool-out-under-file", ops(PRUN, put("f", "x")), "pool {t}/prun --out {t}/f/p.json", "--out"),
    _e("pool-missing-dir", nothing, "pool {t}/nope", "does not exist"),
    # ---- analyze
    _e("analyze-samples-garbage", ops(PRUN, put("prun/samples.npz", GARBAGE)), "analyze {t}/prun", "samples.npz"),
    _e("analyze-pipeline-json-list", ops(PRUN, put("prun/pipeline.json", "[]")), "analyze {t}/prun", "pipeline.json"),
    _e(
        "analyze-reference-positions-garbage",
        ops(DRUN, put("drun/reference/positions.npy", GARBAGE)),
        "analyze {t}/drun",
        "positions.npy",
    ),
    _e("analyze-n-bootstrap-negative", PRUN, "analyze {t}/prun --n-bootstrap -1", "--n-bootstrap"),
    _e("analyze-not-a-run-dir", TRUN, "analyze {t}/trun", "pipeline.json"),
    _e("analyze-missing-dir", nothing, "analyze {t}/nope", "does not exist"),
    # ---- system.yaml
    _e(
        "system-malformed",
        ops(put("s.yaml", "kind: [double_well\n"), FRAMES),
        "energy {t}/s.yaml {t}/frames.npy",
        "s.yaml",
    ),
    _e("system-not-mapping", ops(put("s.yaml", "- kind\n"), FRAMES), "energy {t}/s.yaml {t}/frames.npy", "s.yaml"),
    _e(
        "system-temperature-hot",
        put("s.yaml", DW4_SYS.format(temp="hot")),
        "energy {t}/s.yaml {t}/x.npy",
        "temperature",
    ),
    _e(
        "system-temperature-inf",
        put("s.yaml", DW4_SYS.format(temp=".inf")),
        "energy {t}/s.yaml {t}/x.npy",
        "temperature",
    ),
    _e(
        "system-temperature-nan",
        put("s.yaml", DW4_SYS.format(temp=".nan")),
        "energy {t}/s.yaml {t}/x.npy",
        "temperature",
    ),
    _e(
        "system-temperature-zero", put("s.yaml", DW4_SYS.format(temp="0")), "energy {t}/s.yaml {t}/x.npy", "temperature"
    ),
    _e(
        "system-temperature-negative",
        put("s.yaml", DW4_SYS.format(temp="-3")),
        "energy {t}/s.yaml {t}/x.npy",
        "temperature",
    ),
    Case(
        "system-temperature-1e1",
        ops(put("s.yaml", DW4_SYS.format(temp="1e1")), DW4_FRAMES),
        "energy {t}/s.yaml {t}/dw4_frames.npy",
        0,
        "",
        stdout_only_numbers=True,
    ),
    _e(
        "system-dim-two",
        put("s.yaml", "kind: gaussian_mixture\ndim: two\nmeans: [0, 1]\nstd: 1\n"),
        "energy {t}/s.yaml {t}/x.npy",
        "dim",
    ),
    Case(
        "system-weights-normalised",
        ops(
            put("s.yaml", "kind: gaussian_mixture\nweights: [7, 3]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n"),
            cp("gmm_frames.npy"),
        ),
        "energy {t}/s.yaml {t}/gmm_frames.npy",
        0,
        "normalising them",
        stdout_only_numbers=True,
    ),
    _e("system-energy-cap-negative", ops(aldp("-5"), FRAMES), "energy {t}/aldp.yaml {t}/frames.npy", "energy_cap"),
    _e("system-unknown-name", nothing, "energy alanine_dipeptid {t}/x.npy", "alanine_dipeptide"),
    # ---- simulate
    _e("simulate-ns-zero", nothing, "simulate alanine_dipeptide --ns 0 --out {t}/o", "--ns"),
    _e("simulate-ns-negative", nothing, "simulate alanine_dipeptide --ns -1 --out {t}/o", "--ns"),
    _e("simulate-md-zero-frames", nothing, "simulate alanine_dipeptide --ns 0.0004 --out {t}/o", "0 frames"),
    _e("simulate-mcmc-zero-frames", nothing, "simulate dw4 --steps 50 --save-every 100 --out {t}/o", "0 frames"),
    _e("simulate-mcmc-steps-zero", nothing, "simulate dw4 --steps 0 --out {t}/o", "--steps"),
    _e("simulate-out-is-file", put("o", "x"), "simulate dw4 --steps 200 --out {t}/o", "--out"),
    _e("simulate-out-under-file", put("f", "x"), "simulate dw4 --steps 200 --out {t}/f/o", "--out"),
    _e("simulate-unknown-system", nothing, "simulate lj14 --out {t}/o", "lj13"),
    # ---- energy
    _e("energy-batch-zero", FRAMES, "energy gmm2_unbalanced {t}/frames.npy --batch 0", "--batch"),
    _e("energy-batch-negative", FRAMES, "energy gmm2_unbalanced {t}/frames.npy --batch -4", "--batch"),
    _e("energy-workers-negative", FRAMES, "energy gmm2_unbalanced {t}/frames.npy --workers -1", "--workers"),
    _e("energy-missing-frames", nothing, "energy gmm2_unbalanced {t}/nope.npy", "nope.npy"),
    _e("energy-frames-garbage", put("f.npy", GARBAGE), "energy gmm2_unbalanced {t}/f.npy", "f.npy"),
    _e("energy-frames-wrong-shape", DW4_FRAMES, "energy gmm2_unbalanced {t}/dw4_frames.npy", "expects"),
    _e("energy-missing-top", put("t.dcd", GARBAGE), "energy alanine_dipeptide {t}/t.dcd --top {t}/top.pdb", "top.pdb"),
    _e(
        "energy-out-is-dir",
        ops(FRAMES, mkdir("u.txt")),
        "energy gmm2_unbalanced {t}/frames.npy --out {t}/u.txt",
        "--out",
    ),
    _e(
        "energy-out-under-file",
        ops(FRAMES, put("f", "x")),
        "energy gmm2_unbalanced {t}/frames.npy --out {t}/f/u.txt",
        "--out",
    ),
    Case("energy-ok", FRAMES, "energy gmm2_unbalanced {t}/frames.npy --out {t}/u.txt", 0, "", writes=("u.txt",)),
    Case("energy-dcd-quiet", cp("aldp.dcd"), "energy alanine_dipeptide {t}/aldp.dcd", 0, "", stdout_only_numbers=True),
]
