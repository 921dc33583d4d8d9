#!/usr/bin/env bash
# The GPU machine, simulated here before a device call: its Python (3.12) and its package versions, without the
# packages .carry/ brings, then bench/device_run.sh --cpu-smoke against .carry/ exactly as the device would run it,
# then the model tests on those versions.
#   bench/device_sim.sh [OUTDIR]    # OUTDIR defaults to /tmp/pite-device-sim; the venv is built once and cached
# Not part of `make test`: the first run downloads torch for cp312 (about 0.5 GB, plus its CUDA libraries).
# Versions as ../../.library/device/KINDS.md lists them for the image 'cuda' (2026-11): Python 3.12, torch 2.11.0,
# torchvision 0.26.0, transformers 5.17.0, tokenizers 0.23.2, safetensors 0.8.0, huggingface_hub 1.33.0,
# numpy 2.5.2, accelerate 1.15.0; the others it lists without a version are taken at the lock's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUTDIR=${1:-/tmp/pite-device-sim}
CACHE=${PITE_CACHE:-$HOME/.cache/pite}/device-sim
if [[ -z "${PY312:-}" ]]; then  # the first python3.12 that runs (a pyenv shim may not)
  for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$c" -c "" 2>/dev/null; then PY312=$c; break; fi
  done
fi
[[ -n "${PY312:-}" ]] || { echo "device_sim: no python3.12 here (PY312=PATH)" >&2; exit 2; }
[[ -f .carry/av.tar.xz ]] || { echo "device_sim: no .carry/: run bench/device_bundle.sh first" >&2; exit 2; }
VENV=$CACHE/venv312
DEVICE=(torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 tokenizers==0.23.2 safetensors==0.8.0
        huggingface_hub==1.33.0 numpy==2.5.2 accelerate==1.15.0)
# Packages of the device image the project uses, at the lock's versions (the image gives none for them).
IMAGE=(peft pyarrow pandas opencv-python-headless pyyaml tqdm pillow fsspec tensorboard regex requests pytest
       pytest-timeout typing-extensions sentencepiece protobuf)
pin() { awk -F'==' -v w="$(echo "$1" | tr 'A-Z_' 'a-z-')" '{n=tolower($1); gsub("_","-",n)} n==w {print $1"=="$2}' \
  requirements/lock.txt; }

image=()
for n in "${IMAGE[@]}"; do image+=("$(pin "$n")"); done
wanted="${DEVICE[*]} ${image[*]}"
if [[ "$(cat "$VENV/.done" 2>/dev/null)" != "$wanted" ]]; then  # built once per package list
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  # The device's torch 2.11 and its CUDA libraries (the CPU simulation only imports them); the local constraint
  # file (torch<=2.14.1) allows it.
  "$VENV/bin/pip" install -q "${DEVICE[@]}" "${image[@]}"
  echo "$wanted" > "$VENV/.done"
fi
for absent in av spacy segment_anything omegaconf webdataset braceexpand ray cotracker; do
  if "$VENV/bin/python" -c "import $absent" 2>/dev/null; then
    echo "device_sim: $absent is in the simulated image; it must come from .carry/ only" >&2
    exit 1
  fi
done

rm -rf "$OUTDIR"
PITE_PYTHON="$VENV/bin/python" PITE_SITE=$CACHE/site PITE_WORK=$CACHE/work bench/device_run.sh --cpu-smoke "$OUTDIR"
echo "device_sim: OUTDIR holds: $(cd "$OUTDIR" && ls | tr '\n' ' ')"

# The model tests on the device's versions, with the carried packages on the path as there.
PYTHONPATH="$PWD:$CACHE/site:$PWD/.carry/co-tracker" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_model_*.py tests/test_release*.py tests/test_infer.py tests/test_features.py tests/test_ground*.py \
  tests/test_segment*.py tests/test_track*.py tests/test_train_data.py 2>&1 | tail -n 15
