#!/usr/bin/env bash
# GPU check on one GPU, about 10 minutes: the device tests (tests/test_device.py), a short GPU training of the
# alanine-dipeptide quick recipe, and the throughput benchmark on CUDA (one process: with one GPU its 2-process
# rows are skipped). Logs and results go to $OUT when it is set (a GPU machine's output folder), else to
# benchmarks/_work/gpu_check/; scratch files (MD frames, run directories) to $TMPDIR.
#
#     bash benchmarks/gpu_check.sh      # env: ALDP_STEPS (default 1200; 3000 = the quick recipe's length),
#                                       #      REPEATS (default 3: throughput repeats; 1 if time is short)
#
# The throughput benchmark, the longest step, runs last, so a run cut short still leaves the earlier results
# (each step writes its log as it goes). The exit status is the device tests' (0 when they pass) unless a later
# step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    set +u
    # shellcheck disable=SC1091
    . .venv/bin/activate
    set -u
fi
DEST="${OUT:-benchmarks/_work/gpu_check}"
SCRATCH="${TMPDIR:-/tmp}/boltzdiff_gpu_check"
ALDP_STEPS="${ALDP_STEPS:-1200}"
REPEATS="${REPEATS:-3}"
mkdir -p "$DEST" "$SCRATCH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
t0=$(date +%s)
stamp() { echo "[gpu_check +$(($(date +%s) - t0)) s] $*"; }

stamp "GPU"
nvidia-smi -L | tee "$DEST/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee -a "$DEST/gpu.txt"

stamp "device tests: python -m pytest -q tests/test_device.py"
tests_rc=0
python -m pytest -q -p no:cacheprovider tests/test_device.py >"$DEST/test_device.txt" 2>&1 || tests_rc=$?
tail -n 15 "$DEST/test_device.txt"
stamp "device tests: exit $tests_rc"

stamp "alanine dipeptide, quick recipe on the GPU ($ALDP_STEPS steps, a third DSM-only)"
if [ ! -f "$SCRATCH/aldp_md/positions.npy" ]; then
    python -m boltzdiff simulate alanine_dipeptide --ns 0.05 --save-every-ps 0.1 --out "$SCRATCH/aldp_md" \
        --no-progress >"$DEST/aldp_md.txt" 2>&1
fi
python - "$DEST/aldp_quick_train.yaml" <<'PY'
import sys

import yaml

from boltzdiff.systems import load_system

quick = load_system("alanine_dipeptide").run_defaults["presets"]["quick"]["train"]
with open(sys.argv[1], "w") as fh:
    yaml.safe_dump({"train": quick}, fh)
PY
rm -rf "$SCRATCH/aldp_train"
python -m boltzdiff train --system alanine_dipeptide --config "$DEST/aldp_quick_train.yaml" \
    --data "$SCRATCH/aldp_md/positions.npy" --steps "$ALDP_STEPS" --warmup-steps $((ALDP_STEPS / 3)) \
    --device cuda --out "$SCRATCH/aldp_train" --no-progress 2>&1 | tee "$DEST/aldp_train.txt"
cp "$SCRATCH/aldp_train/train_summary.json" "$DEST/aldp_train_summary.json"
cp "$SCRATCH/aldp_train/metrics.jsonl" "$DEST/aldp_train_metrics.jsonl"
cat "$DEST/aldp_train_summary.json"

stamp "throughput: python benchmarks/throughput.py --device cuda --repeats $REPEATS"
python benchmarks/throughput.py --device cuda --repeats "$REPEATS" --json "$DEST/throughput.json" \
    --work "$SCRATCH/throughput" 2>&1 | tee "$DEST/throughput.txt"

stamp "done; results in $DEST"
exit "$tests_rc"
