#!/usr/bin/env bash
# The GPU machine's one command (the device tool), from the repo root with .carry/ beside the code
# (bench/device_bundle.sh builds it here):
#   bench/device_run.sh OUTDIR               unpack .carry/, print the GPU and the package versions, run
#                                            bench/gpu_check.sh at real size; each step's result is copied to OUTDIR
#                                            as soon as it finishes, so a run cut off at its limit returns those
#   bench/device_run.sh --cpu-smoke OUTDIR   the same on a CPU at tiny sizes (bench/device_sim.sh runs it so)
# As a device call: command `bench/device_run.sh $OUT`, carry [".carry"], timeout_s 480 (the check's limits add up
# to 360 s; unpacking takes about 5 s). The check's big files (weights, clips) stay in PITE_WORK, not in OUTDIR.
set -uo pipefail
SMOKE=()
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=(--cpu-smoke); shift; fi
if [[ $# -ne 1 ]]; then
  echo "usage: bench/device_run.sh [--cpu-smoke] OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUTDIR="$(cd "$1" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PITE_PYTHON:-python3}
SITE=${PITE_SITE:-/tmp/pite-site}
WORK=${PITE_WORK:-/tmp/pite-gpu-check}
START=$SECONDS
ls .carry/*.tar.xz >/dev/null 2>&1 || { echo "device_run: no .carry/*.tar.xz: run bench/device_bundle.sh here" \
  "first and name .carry in the call's carry" | tee "$OUTDIR/summary.txt"; exit 2; }
rm -rf "$SITE" "$WORK"
mkdir -p "$SITE"
"$PY" -c "import sys, tarfile; [tarfile.open(f).extractall(sys.argv[1], filter='data') for f in sys.argv[2:]]" \
  "$SITE" .carry/*.tar.xz || { echo "device_run: could not unpack .carry" | tee "$OUTDIR/summary.txt"; exit 3; }
# The checkout itself too: nothing is installed there, and `python bench/x.py` puts only bench/ on the path.
export PYTHONPATH="$PWD:$SITE:$PWD/.carry/co-tracker${PYTHONPATH:+:$PYTHONPATH}" PITE_PYTHON="$PY" \
  PITE_RESULTS="$OUTDIR" PYTHONUNBUFFERED=1
{
  echo "device_run: unpacked .carry in $((SECONDS - START)) s"
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not here"
  "$PY" - <<'PY'
import importlib.metadata as md, platform
names = ["torch", "transformers", "tokenizers", "numpy", "pyarrow", "opencv-python-headless", "av", "spacy",
         "segment-anything", "omegaconf", "webdataset", "typing-extensions"]
found = []
for n in names:
    try:
        found.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        found.append(f"{n} missing")
import torch
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}; {cuda}; " + ", ".join(found))
PY
} 2>&1 | tee "$OUTDIR/env.txt"
rc=0
bench/gpu_check.sh "${SMOKE[@]}" "$WORK" || rc=$?
cp -f "$WORK/summary.txt" "$OUTDIR/" 2>/dev/null
echo "device_run: exit $rc after $((SECONDS - START)) s"
exit $rc
