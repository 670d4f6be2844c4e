#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs the whole test suite in up to three
# builds: the parts without LibTorch under ASan + UBSan with every fuzz target
# (`sanitize`), against Debian's LibTorch 1.13 (CPU, `debian`), and against the
# CUDA LibTorch 2.x inside a pip torch wheel (`torch2`: the build a GPU box
# makes; here its tests run on the CPU, and the tests labelled `cuda` skip
# themselves without a GPU; `torch2-build` compiles and links it only).
#   LORAD_TEST_BUILDS="sanitize debian torch2" (default) or some of them.
#   LORAD_FUZZ_SECONDS: seconds per fuzz target in `sanitize` (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
jobs="$(nproc)"
builds="${LORAD_TEST_BUILDS:-sanitize debian torch2}"

# ccache keeps rebuilds of unchanged files cheap between runs on the same machine.
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$PWD" CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
fi

# The Python of the reader tests (tests/python-requirements.txt, pinned): one
# venv in build/pyenv, made once and remade only when the requirements change;
# pip's cache keeps a remake offline-cheap. The builds' tests run with it, and
# a reader test whose packages are missing fails instead of skipping.
pyenv="$PWD/build/pyenv"
if ! cmp -s tests/python-requirements.txt "${pyenv}/requirements.txt"; then
  echo "== Python test packages (tests/python-requirements.txt) into ${pyenv}"
  rm -rf "${pyenv}"
  python3 -m venv "${pyenv}"
  "${pyenv}/bin/pip" install --quiet --disable-pip-version-check -r tests/python-requirements.txt
  cp tests/python-requirements.txt "${pyenv}/requirements.txt"
fi
export LORAD_REQUIRE_PYTHON_TESTS=1

run_build() {  # NAME BUILD_DIR RUN_TESTS(yes|no) [extra cmake args...]
  local name="$1" dir="$2" run_tests="$3"; shift 3
  local start=$SECONDS
  echo "== ${name}: configure + build (${dir})"
  cmake -S . -B "${dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORAD_TEST_PYTHON="${pyenv}/bin/python3" \
    "${launcher[@]}" "$@"
  cmake --build "${dir}" --parallel "${jobs}"
  if [ "${run_tests}" != yes ]; then
    echo "== ${name}: compiled and linked in $((SECONDS - start)) s (tests not run in this mode)"
    return
  fi
  echo "== ${name}: tests"
  ctest --test-dir "${dir}" --output-on-failure --parallel "${jobs}" --timeout 900
  echo "== ${name}: done in $((SECONDS - start)) s"
}

for b in ${builds}; do
  case "$b" in
    sanitize) ./deploy/sanitize.sh ;;
    debian) run_build "Debian LibTorch 1.13 (CPU)" build yes ;;
    torch2) run_build "pip torch LibTorch 2.x (CUDA build, tests on CPU)" build-torch2 yes \
              -DCMAKE_PREFIX_PATH="$(./deploy/install-torch.sh)" ;;
    torch2-build) run_build "pip torch LibTorch 2.x (CUDA build)" build-torch2 no \
              -DCMAKE_PREFIX_PATH="$(./deploy/install-torch.sh)" ;;
    *) echo "test.sh: unknown build '$b' (use sanitize, debian, torch2, torch2-build)" >&2; exit 2 ;;
  esac
done
