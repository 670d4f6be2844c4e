#!/usr/bin/env bash
# The sanitizer and fuzzing build: everything that needs no LibTorch (base,
# config, planner, storage, server, client and the parsers of what a job brings)
# built by clang 14 with AddressSanitizer + UndefinedBehaviorSanitizer, its unit
# tests, then every libFuzzer target replaying its seed corpus (fuzz/corpus/,
# past crashes included) and fuzzing for LORAD_FUZZ_SECONDS each (default 20).
# Assumes deploy/install-deps.sh ran. Build dir: build-sanitize.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
start=$SECONDS
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
echo "== sanitize: configure + build (build-sanitize, clang 14, ASan + UBSan, libFuzzer)"
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O1 \
  -DCMAKE_CXX_COMPILER=clang++-14 \
  "${launcher[@]}" -DLORAD_WITHOUT_TORCH=ON -DLORAD_SANITIZE=ON -DLORAD_FUZZ=ON \
  -DLORAD_FUZZ_SECONDS="${LORAD_FUZZ_SECONDS:-20}"
cmake --build build-sanitize --parallel "${jobs}"
# Any sanitizer report fails the test that triggered it.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if command -v llvm-symbolizer-14 >/dev/null; then
  export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer-14)"
fi
echo "== sanitize: unit tests under ASan + UBSan"
ctest --test-dir build-sanitize --output-on-failure --parallel "${jobs}" --timeout 900 -LE fuzz
echo "== sanitize: fuzz targets (${LORAD_FUZZ_SECONDS:-20} s each)"
ctest --test-dir build-sanitize --output-on-failure --parallel "${jobs}" -L fuzz
echo "== sanitize: done in $((SECONDS - start)) s"
