#!/usr/bin/env bash
# The one script a GPU machine runs as it is (issue 11): builds the engine
# (LORAD_ENGINE_ONLY) against that machine's pip torch, runs the tests labelled
# `cuda`, then `lorad-bench gpu` at 8x8 latents and at 1024 px (and `lorad-bench ddp
# --device cuda` where more than one GPU is visible). Logs and JSON go
# to $OUT (default ./gpu_out); the whole run is kept within about 8 minutes
# (LORAD_GPU_TOTAL_S) by capping every step with `timeout`.
#
# The small-latent gpu run (8x8 latents, 64 px) is the host-overhead figure on
# the GPU: its arithmetic is tiny, so its ms/step is what the host's dispatch
# costs in each step mode (the CPU's `lorad-bench overhead` counts the ops).
#
# Needs: g++, CMake, Ninja, python3 with a CUDA torch, GoogleTest, protobuf,
# spdlog, nlohmann-json. Abseil, toml++ and the test fixtures come from
# device_carry/, which bench/gpu/prepare_carry.sh fills on a development machine.
#
# LORAD_GPU_BENCH_ARGS adds flags to the 1024 px `lorad-bench gpu` run, to
# spend a short lease on what is left to measure, e.g.
# LORAD_GPU_BENCH_ARGS="--batches 4 --checkpointing on --modes graphs".
#
# Files in $OUT (8 at most come back from a lent GPU machine): run.log,
# configure.log, build.log, ctest.log, bench_small.log, bench_small.json,
# bench_gpu.log, bench_gpu.json.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
OUT=${OUT:-$repo/gpu_out}
mkdir -p "$OUT"
carry="$repo/device_carry"
build=${LORAD_GPU_BUILD_DIR:-$repo/build-gpu}
total_s=${LORAD_GPU_TOTAL_S:-470}
start=$(date +%s)

log() { echo "[run.sh +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/run.log"; }
left() { echo $(( total_s - ($(date +%s) - start) )); }
# step NAME CAP_S CMD...: runs CMD with at most min(CAP_S, time left) seconds,
# output to $OUT/NAME.log; prints the tail of the log when it fails.
step() {
  local name=$1 cap=$2 limit rc
  shift 2
  limit=$(left)
  (( cap < limit )) && limit=$cap
  if (( limit < 10 )); then
    log "$name: skipped, the ${total_s} s budget is spent"
    return 124
  fi
  log "$name (at most ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  log "$name: exit $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)')"
  if (( rc != 0 )); then tail -n 40 "$OUT/$name.log" | tee -a "$OUT/run.log"; fi
  return $rc
}

: >"$OUT/run.log"
log "repo $repo, build $build, OUT $OUT, budget ${total_s} s"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true; } | tee -a "$OUT/run.log"
if [[ ! -d "$carry/usr" ]]; then
  log "device_carry/ is missing: run bench/gpu/prepare_carry.sh on a development machine and carry device_carry"
  exit 1
fi
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || {
  log "python3 cannot import torch: install a CUDA torch (pip install torch)"
  exit 1
}
log "torch $(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)') at $torch_prefix"

export LORAD_FIXTURES="$carry/fixtures"
export LD_LIBRARY_PATH="$carry/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
jobs=$(nproc)

# The carry comes after torch and before the system: Abseil and toml++ are
# found there (CMake config and pkg-config both search CMAKE_PREFIX_PATH first).
step configure 120 cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DLORAD_ENGINE_ONLY=ON -DCMAKE_PREFIX_PATH="$torch_prefix;$carry/usr" \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 || exit 1
grep -E '^(absl_DIR|Torch_DIR|TOMLPP_INCLUDEDIR|pkgcfg_lib_TOMLPP_tomlplusplus):' "$build/CMakeCache.txt" | tee -a "$OUT/run.log"

# Only what runs here: the cuda tests and lorad-bench (the rest of the engine's
# tests run in CI on the CPU).
step build 300 cmake --build "$build" -j "$jobs" --target cuda_tests lorad-bench || exit 1

ctest_rc=0
# Four at a time: each test is a process of its own that mostly waits for the GPU.
step ctest 120 ctest --test-dir "$build" -L cuda -V -j 4 --timeout 100 || ctest_rc=$?
grep -E 'tests passed|tests failed|rel L2|Skipped|Failed' "$OUT/ctest.log" | tee -a "$OUT/run.log"

# Host overhead on the GPU first (about 40 s): batch 1 at 8x8 latents.
small_rc=0
step bench_small 75 "$build/bench/lorad-bench" gpu --latent 8 --batches 1 --checkpointing off \
  --json "$OUT/bench_small.json" --budget-s 50 || small_rc=$?
cat "$OUT/bench_small.log" >>"$OUT/run.log"

# lorad-bench gpu stops starting cases when its own budget is spent and keeps
# the JSON of every finished case; 20 s are left for the ddp step's message.
gpu_rc=0
gpu_cap=$(( $(left) - 20 ))
# shellcheck disable=SC2086  # LORAD_GPU_BENCH_ARGS is a list of flags
step bench_gpu "$gpu_cap" "$build/bench/lorad-bench" gpu --json "$OUT/bench_gpu.json" \
  --budget-s $(( gpu_cap > 120 ? gpu_cap - 60 : gpu_cap / 2 )) ${LORAD_GPU_BENCH_ARGS:-} || gpu_rc=$?
cat "$OUT/bench_gpu.log" >>"$OUT/run.log"

# Data-parallel over NCCL (issue 15): 2 ranks on cuda:0 and cuda:1 against 1,
# only where more than one GPU is visible (NCCL refuses two ranks on one GPU).
# Its log is folded into run.log (at most 8 files come back).
ddp_rc=0
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if (( gpus > 1 )); then
  step bench_ddp_nccl 90 "$build/bench/lorad-bench" ddp --device cuda || ddp_rc=$?
  cat "$OUT/bench_ddp_nccl.log" >>"$OUT/run.log"
  rm -f "$OUT/bench_ddp_nccl.log"
else
  log "bench_ddp_nccl: skipped, ${gpus:-0} GPU(s) visible (NCCL data-parallel needs 2 or more)"
fi

log "done: ctest $ctest_rc, bench small $small_rc, bench gpu $gpu_rc, bench ddp nccl $ddp_rc"
(( ctest_rc == 0 && small_rc == 0 && gpu_rc == 0 && ddp_rc == 0 ))
