#!/usr/bin/env bash
# Installs every build and run dependency of lorad from Debian 12 packages.
# Idempotent and non-interactive: packages already present are left alone.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates python3 python3-venv ccache
  libtorch-dev libopenblas0-pthread
  libgloo-dev  # c10d's Gloo header needs it: data-parallel lorad-train on the CPU (core/train/distributed.cc)
  iproute2     # ip netns: the two-machine data-parallel test (core/train/ddp_test.cc, as root)
  slurmctld slurmd slurm-client munge  # the Slurm executor's single-node test (tests/slurm_integration_test.cc)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev libsqlite3-dev sqlite3
  libcurl4-openssl-dev openssl  # the HTTP client (webhooks, model pulls); openssl: test CAs
  libopencv-dev libopencv-dnn-dev  # dnn: lorad-tag (libopencv-dev depends on it; named for clarity)
  # The dashboard's HTTP server: cpp-httplib is in Debian (security updates
  # come from the distribution), small, serves connections from a thread
  # pool, and its chunked content provider carries Server-Sent Events.
  libcpp-httplib-dev
  chromium chromium-driver  # the dashboard's browser test (tests/web/browser_test.py, headless)
  libgtest-dev libgmock-dev nlohmann-json3-dev libtomlplusplus-dev
  clang-14 libclang-rt-14-dev llvm-14  # the sanitizer and fuzzing build (llvm-14: the symbolizer)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
