#!/usr/bin/env bash
# The GPU figures in one command, for a machine with one H100 or H200 that reaches nothing outside (on the device
# tool's machine: bench/device_run.sh, which unpacks .carry/ and calls this):
#   bench/gpu_check.sh OUTDIR              random weights at the published sizes, bench/realsize.py on 4 clips of
#                                          30 s at 1280x720 on cuda, the trainer's 7B-shaped GPU step (bench/train.py)
#   bench/gpu_check.sh --cpu-smoke OUTDIR  every step on the CPU at tiny sizes: checks this script, not the GPU
# Writes OUTDIR/weights.txt, realsize.json, train.json, logs/*.log and summary.txt; the last line on stdout is the
# summary. Each step runs under `timeout`; the limits add up to 6 minutes (imports 15 s, the three input jobs at once
# 110 s, realsize 145 s, train 90 s), so a slow step fails by name instead of overrunning. With PITE_RESULTS=DIR,
# each step's log and output are copied there as soon as it finishes (a run cut off still returns those).
# No Ray is needed: the demo run for the trainer's loader uses executor=local.
# Python: $PITE_PYTHON if set (an interpreter that already has the project's requirements and `cotracker`: required
# on a machine without network), else .venv/bin/python, else `make setup cotracker` first (needs python3.11 and the
# package registry; its own limit, 600 s, is outside the 6 minutes).
set -euo pipefail

SMOKE=0 LIMIT_FACTOR=1
# A smoke run's limits are three times the GPU run's: a 2-core CPU box is slower at tiny sizes than an H100 at real
# ones, and the smoke checks the script, not the time.
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=1 LIMIT_FACTOR=3; shift; fi
if [[ $# -ne 1 ]]; then
  echo "usage: bench/gpu_check.sh [--cpu-smoke] OUTDIR" >&2
  exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$1/logs"
OUT="$(cd "$1" && pwd)"
START=$SECONDS
exec 3>&1  # the script's own stdout, for the FAILED line of a step whose stdout goes to a file

say() { echo "[gpu_check $((SECONDS - START))s] $*" >&2; }

# step NAME LIMIT_S CMD...: CMD under `timeout`, its stderr in logs/NAME.log; a failure names the step and the log.
step() {
  local name=$1 limit=$(( $2 * LIMIT_FACTOR )) rc=0
  shift 2
  say "$name (at most ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>"$OUT/logs/$name.log" || rc=$?
  if [[ -n "${PITE_RESULTS:-}" ]]; then
    mkdir -p "$PITE_RESULTS/logs"
    cp -f "$OUT/logs/$name.log" "$PITE_RESULTS/logs/" 2>/dev/null || true
    find "$OUT" -maxdepth 1 -type f \( -name '*.json' -o -name '*.txt' \) -exec cp -f {} "$PITE_RESULTS/" \;
  fi
  if [[ $rc -ne 0 ]]; then
    [[ $rc -eq 124 ]] && say "$name: timed out after ${limit}s" || say "$name: failed (exit $rc)"
    tail -n 20 "$OUT/logs/$name.log" >&2
    echo "gpu_check: FAILED at $name (exit $rc), see $OUT/logs/$name.log" >&3
    exit 1
  fi
}

if [[ -n "${PITE_PYTHON:-}" ]]; then
  PY=$PITE_PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  say "no .venv: make setup (pip install -r requirements/lock.txt; offline only from cached wheels)"
  step setup 600 make setup cotracker
  PY=.venv/bin/python
fi
step imports 15 "$PY" -c "import torch, transformers, segment_anything, av, cotracker, spacy, omegaconf, webdataset"

if [[ $SMOKE -eq 1 ]]; then
  WEIGHTS=tiny DEVICE=cpu CLIPS=1 SECONDS_PER_CLIP=2 SIZE=320x180 FPS=15 DEMO_CLIPS=16
  REALSIZE_EXTRA=(--set "track.interp_shape=[96,128]")
  # the loader, the tiny model's step, and the GPU step's code at a tiny shape on the CPU
  TRAIN_ARGS=(--batches 4 --model-steps 2 --gpu --gpu-compare --gpu-device cpu --gpu-shape tiny --gpu-batch 2 --steps 1)
else
  [[ "$("$PY" -c 'import torch; print(torch.cuda.is_available())')" == True ]] || {
    echo "gpu_check: FAILED: torch sees no CUDA device (use --cpu-smoke to check the script on a CPU)"; exit 1; }
  WEIGHTS=real DEVICE=cuda CLIPS=4 SECONDS_PER_CLIP=30 SIZE=1280x720 FPS=30 DEMO_CLIPS=32
  REALSIZE_EXTRA=()
  # The 7B-shaped step at stage 2's shape (configs/train/stage2-7b.yaml: batch 8 x ~350 tokens, 100 of them frames).
  TRAIN_ARGS=(--gpu --gpu-compare --gpu-batch 8 --text-tokens 250 --steps 10)
fi
WIDTH=${SIZE%x*} HEIGHT=${SIZE#*x}
FRAMES=$(( SECONDS_PER_CLIP * FPS ))

# Inputs, three CPU jobs at once: the random weights, the clips, and a small annotated demo run for the trainer's
# loader (the embedded CPU path on synthetic clips; bench/train.py reads its shards and index).
say "inputs: weights ($WEIGHTS), $CLIPS clip(s) of ${SECONDS_PER_CLIP}s at $SIZE, $DEMO_CLIPS demo clips"
step weights 110 "$PY" -m pipelines.cli weights random --size "$WEIGHTS" --out "$OUT/weights" >"$OUT/weights.txt" &
W=$!
step clips 110 "$PY" -m pipelines.synth --n "$CLIPS" --seed 0 --out "$OUT/clips" --width "$WIDTH" \
  --height "$HEIGHT" --frames "$FRAMES" --fps "$FPS" --workers "$CLIPS" >/dev/null &
C=$!
step demo 110 "$PY" -m pipelines.annotate --config configs/annotate/demo.yaml "synth.n=$DEMO_CLIPS" \
  "synth.out=$OUT/demo-synth" "input=$OUT/demo-synth/manifest.jsonl" "out=$OUT/demo-run" rows_per_shard=8 \
  executor=local progress=false >/dev/null &
D=$!
wait $W
wait $C
wait $D

step realsize 145 "$PY" bench/realsize.py --weights "$OUT/weights" --device "$DEVICE" --clips "$CLIPS" \
  --seconds "$SECONDS_PER_CLIP" --size "$SIZE" --fps "$FPS" --clips-dir "$OUT/clips" "${REALSIZE_EXTRA[@]}" \
  >"$OUT/realsize.json"
step train 90 "$PY" bench/train.py --data "$OUT/demo-run" "${TRAIN_ARGS[@]}" >"$OUT/train.json"

"$PY" - "$OUT" "$((SECONDS - START))" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out, took = Path(sys.argv[1]), sys.argv[2]
r = json.loads((out / "realsize.json").read_text())
t = json.loads((out / "train.json").read_text())
b = r["cotracker_backward_vs_one_pass"]
gpu = t.get("gpu_7b", {})
train = (f"7B step {gpu['step_s']} s, {gpu['tokens_per_s']:.0f} tok/s, MFU {gpu['mfu']} "
         f"({t.get('gpu_7b_speedup')}x the step with every speed switch off)" if "step_s" in gpu
         else f"tiny step {t['tiny_step_s']} s, loader {t['loader_samples_per_s']} samples/s")
print(f"gpu_check: OK in {took} s on {r['device_name']}: {r['seconds_per_clip']} s/clip "
      f"(gpu {r['gpu_seconds_per_clip']} s, busy {r['device_busy_share']}, peak {r['peak_memory_gb']} GB), "
      f"143k clips on 8 GPUs {r['projected_hours_143k_8gpu']} h, backward/one-pass {b.get('ratio')}x "
      f"(goal {b.get('goal')}), rejected {len(r['rejected'])}; {train}")
EOF
