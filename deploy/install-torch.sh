#!/usr/bin/env bash
# Installs the CUDA-enabled LibTorch that a GPU box builds against: the pip
# `torch` wheel (C++11 ABI, headers + TorchConfig.cmake inside), in its own venv.
# Prints the CMake prefix path to pass as -DCMAKE_PREFIX_PATH. Idempotent.
#   LORAD_TORCH_VERSION  wheel version (default below: the release we test)
#   LORAD_TORCH_VENV     where the venv lives (default ~/.cache/lorad/torch-<version>)
set -euo pipefail

version="${LORAD_TORCH_VERSION:-2.11.0}"
venv="${LORAD_TORCH_VENV:-${HOME}/.cache/lorad/torch-${version}}"

if [ ! -x "${venv}/bin/python" ] || ! "${venv}/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${version}')" 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -qq --no-install-recommends python3-venv >&2
  fi
  echo "install-torch: installing torch==${version} into ${venv} (about 4.6 GB with its CUDA libraries)" >&2
  python3 -m venv "${venv}" >&2
  "${venv}/bin/pip" install -q --disable-pip-version-check "torch==${version}" >&2
fi
"${venv}/bin/python" -c "import torch; print(torch.utils.cmake_prefix_path)" 2>/dev/null
