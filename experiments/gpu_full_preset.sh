#!/usr/bin/env bash
# The alanine-dipeptide full preset's training and SMC on a GPU (`--device cuda`), from MD data made elsewhere.
#
#   bash experiments/gpu_full_preset.sh REF_DIR OUT_DIR [N_RUNS] [MCMC_STEPS] [BUDGET_S] [TRAIN_DIR]
#
# REF_DIR: a finished `reference/` folder of the full preset (positions.npy, energies.npy, progress.json,
# topology.pdb), e.g. 2 x 5 ns of 300 K MD started in both basins; the MD is not rerun here (OpenMM's CPU
# platforms are what the pipeline uses for it). Runs, in order:
#   1. tests/test_device.py (every stage on the GPU, and device results equal to CPU ones);
#   2. `boltzdiff run` on a copy of boltzdiff/systems/alanine_dipeptide whose full preset takes the data's settings
#      (300 K replicas from both basins), N_RUNS SMC runs of 4000 particles with MCMC_STEPS MALA moves per
#      level (default 6 and 10), OpenMM target energies in 8 worker processes; stopped after BUDGET_S
#      seconds (default 420; finished SMC runs are kept in sample_runs/ and resume). With TRAIN_DIR (a finished
#      train/ stage of the same settings, e.g. from an earlier call) training is skipped.
# DEVICE=cpu runs the same on the CPU (to check the script); SEED=S seeds the SMC runs (default 0); SKIP_TESTS=1.
# Writes to OUT_DIR: log.txt, run.tar.gz (the run directory without reference/ and checkpoints), samples.npz.
# Where Python packages are missing (no network), wheels in .whl/ are installed into /tmp/site first.
set -u
REF=${1:?REF_DIR}
OUT=${2:?OUT_DIR}
N_RUNS=${3:-6}
MCMC=${4:-10}
BUDGET=${5:-420}
TRAIN=${6:-}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
if ! python3 -c "import openmm, mdtraj" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, openmm, mdtraj; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'openmm', openmm.__version__, 'mdtraj', \
mdtraj.__version__, 'cpus', __import__('os').cpu_count())"

if [ -z "${SKIP_TESTS:-}" ]; then
echo "== tests/test_device.py"
t=$(date +%s)
python3 -m pytest -q -p no:cacheprovider tests/test_device.py -rs > "$OUT/tests.txt" 2>&1
tail -5 "$OUT/tests.txt"
echo "tests: $(( $(date +%s) - t )) s"
fi

echo "== full preset on the GPU"
SYS=/tmp/gpu_aldp/alanine_dipeptide
RUN=/tmp/gpu_aldp/run
rm -rf /tmp/gpu_aldp && mkdir -p /tmp/gpu_aldp "$RUN"
cp -r boltzdiff/systems/alanine_dipeptide "$SYS"
cp -r "$REF" "$RUN/reference"
[ -n "$TRAIN" ] && cp -r "$TRAIN" "$RUN/train"
python3 - "$SYS" "$N_RUNS" "$MCMC" <<'EOF'
import sys, yaml
d, n_runs, mcmc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = yaml.safe_load(open(f"{d}/run.yaml"))
full = run["presets"]["full"]
full["reference"] = {"ns": 5.0, "temperature": 300.0, "save_every_ps": 0.5,
                     "starts": [None, "alanine-dipeptide-phi-pos.pdb"]}
full["sample"].update(n=4000 * n_runs, n_runs=n_runs, mcmc_steps=mcmc)
yaml.safe_dump(run, open(f"{d}/run.yaml", "w"))
spec = yaml.safe_load(open(f"{d}/system.yaml"))
spec["n_workers"] = 8
yaml.safe_dump(spec, open(f"{d}/system.yaml", "w"))
print("full preset:", full)
EOF
t=$(date +%s)
timeout "$BUDGET" python3 -m boltzdiff.cli run "$SYS" --preset full --device "$DEVICE" --seed "${SEED:-0}" --out "$RUN" --no-progress
echo "boltzdiff run: rc $? after $(( $(date +%s) - t )) s"
ls "$RUN" "$RUN/sample_runs" 2>/dev/null
[ -f "$RUN/analysis.json" ] && python3 -c "import json; a=json.load(open('$RUN/analysis.json')); \
print({k: a.get(k) for k in ('delta_f_kT','delta_f_se_kT','delta_f_runs_kT','ess','n_target_evals','train_wall_s','sample_wall_s','pmf_rmse_kT','mean_energy_kT')})"
[ -f "$RUN/samples.npz" ] && cp "$RUN/samples.npz" "$OUT/"
tar -czf "$OUT/run.tar.gz" -C /tmp/gpu_aldp --exclude=run/reference --exclude=run/train/ckpt.pt \
    --exclude=run/samples.npz run alanine_dipeptide
ls -la "$OUT"
date -u
