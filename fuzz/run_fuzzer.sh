#!/usr/bin/env bash
# Runs one libFuzzer target: every file of its seed corpus first (the kept
# crashes among them are regression cases), then new inputs for SECONDS.
# A crash fails the run and leaves the input in WORK_DIR/crashes/; copy it into
# the seed corpus (fuzz/corpus/NAME/) once fixed, so it is replayed forever.
#   run_fuzzer.sh FUZZER SEED_DIR WORK_DIR SECONDS
set -euo pipefail
fuzzer="$1" seeds="$2" work="$3" seconds="$4"
mkdir -p "${work}/corpus" "${work}/crashes"
# -rss_limit_mb and -malloc_limit_mb: an input that makes a parser allocate
# more than a gigabyte is a finding too (the decompression-bomb class).
exec "${fuzzer}" "${work}/corpus" "${seeds}" \
  -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
  -max_len=65536 -print_final_stats=1 -artifact_prefix="${work}/crashes/"
