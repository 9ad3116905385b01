#!/usr/bin/env bash
# Non-editable install check: build a wheel from a clean copy of the working tree, install it (without
# dependencies) into a fresh virtual environment that sees the current environment's packages, and, from a
# temporary directory outside the source tree, load every shipped system (each variant) and run the DW4 quick
# preset through the installed `boltzdiff` command.
#
#   PYTHON=python .ci/wheel_check.sh        (default: the `python` on PATH, e.g. the CI venv's)
#   NO_BUILD_ISOLATION=1 .ci/wheel_check.sh  build with the current environment's setuptools (offline)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH
t0=$(date +%s)

# 1. a clean copy (tracked and unignored files only): an in-tree build/ folder could carry stale modules
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/cwd"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$WORK/src"
else
    cp -a "$ROOT/." "$WORK/src/"
    rm -rf "$WORK/src/build" "$WORK/src"/*.egg-info "$WORK/src"/.venv*
fi

# 2. the wheel
iso=()
[ "${NO_BUILD_ISOLATION:-0}" = 1 ] && iso=(--no-build-isolation)
"$PY" -m pip wheel "$WORK/src" --no-deps "${iso[@]}" -q -w "$WORK/dist"
wheel=$(ls "$WORK"/dist/boltzdiff-*.whl)
echo "wheel_check: built $(basename "$wheel")"

# 3. a fresh venv; the current environment's site-packages are appended to its path by a .pth file (a plain path
# line: .pth files there, such as an editable install's, are not processed), so the wheel's boltzdiff comes first
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
deps=$("$PY" -c "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['platlib'])" | sort -u)
vsite=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '%s\n' "$deps" >"$vsite/_wheel_check_deps.pth"
"$VPY" -m pip install --no-deps -q "$wheel"

# 4. from outside the source tree
cd "$WORK/cwd"
"$VPY" - <<'EOF'
import sysconfig
from pathlib import Path

import yaml

import boltzdiff
from boltzdiff.systems import SYSTEMS_DIR, available_systems, load_system

site = Path(sysconfig.get_paths()["purelib"]).resolve()
where = Path(boltzdiff.__file__).resolve()
assert site in where.parents, f"boltzdiff was imported from {where}, not from the venv's {site}"
names = available_systems()
shipped = {"alanine_dipeptide", "dw4", "gmm2_unbalanced", "gmm40_2d", "lj13", "lj13_unique", "lj55", "lj55_unique"}
assert shipped <= set(names), f"shipped systems missing from the wheel: {sorted(shipped - set(names))}"
for name in names:
    variants = yaml.safe_load((SYSTEMS_DIR / name / "system.yaml").read_text()).get("variants") or {}
    for variant in [None, *sorted(variants)]:
        s = load_system(name, variant=variant)
        print(f"wheel_check: {name}{'/' + variant if variant else ''}: {s.kind}, dim {s.target.dim}")
        if hasattr(s.target, "close"):
            s.target.close()
EOF
"$WORK/venv/bin/boltzdiff" run dw4 --preset quick --out "$WORK/cwd/dw4" --no-progress >"$WORK/run.log" 2>&1 || {
    tail -n 30 "$WORK/run.log"
    exit 1
}
tail -n 5 "$WORK/run.log"
echo "wheel_check: ok in $(($(date +%s) - t0)) s"
