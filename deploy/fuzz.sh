#!/usr/bin/env bash
# Fuzzes longer than CI does: builds the sanitizer build (deploy/sanitize.sh's
# configuration) and runs each named target, or all of them, for SECONDS
# (default 600). New inputs go to build-sanitize/fuzz/work/NAME/corpus; a crash
# is written to build-sanitize/fuzz/work/NAME/crashes/. Once it is fixed, copy
# the crash file into fuzz/corpus/NAME/ so every later run replays it.
#   deploy/fuzz.sh [SECONDS] [NAME ...]     e.g. deploy/fuzz.sh 3600 safetensors_header
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O1 \
  -DCMAKE_CXX_COMPILER=clang++-14 \
  -DLORAD_WITHOUT_TORCH=ON -DLORAD_SANITIZE=ON -DLORAD_FUZZ=ON >/dev/null
cmake --build build-sanitize --parallel "$(nproc)"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/*_fuzzer.cc; do targets+=("$(basename "$f" _fuzzer.cc)"); done
fi
status=0
for name in "${targets[@]}"; do
  echo "== fuzz ${name}: ${seconds} s"
  fuzz/run_fuzzer.sh "build-sanitize/fuzz/${name}_fuzzer" "fuzz/corpus/${name}" \
    "build-sanitize/fuzz/work/${name}" "${seconds}" || status=1
done
exit "${status}"
