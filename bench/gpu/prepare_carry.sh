#!/usr/bin/env bash
# Fills device_carry/ (git-ignored) with what bench/gpu/run.sh needs on a GPU
# machine that lacks it and has no package registry: Debian 12's Abseil and
# toml++ (headers, CMake/pkg-config files, shared libraries; they need only
# libc and libstdc++ to link) and the fixtures the cuda tests read. Run it here,
# on a Debian 12 development machine, from anywhere in the checkout:
#
#   bench/gpu/prepare_carry.sh        # LORAD_FIXTURES=DIR overrides ../shared/fixtures
#
# then send the checkout with device_carry/ carried and run bench/gpu/run.sh there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
carry="$repo/device_carry"
fixtures=${LORAD_FIXTURES:-$repo/../shared/fixtures}
packages=(libabsl-dev libabsl20220623 libtomlplusplus-dev libtomlplusplus3)
limit_mib=48  # the tree the device machine receives is capped at 64 MiB, the checkout included

debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
chmod 777 "$debs"  # apt-get download runs as _apt
rm -rf "$carry"
mkdir -p "$carry/fixtures"
(cd "$debs" && apt-get download "${packages[@]}")
for deb in "$debs"/*.deb; do
  dpkg -x "$deb" "$carry"
done
rm -rf "$carry/usr/share/doc" "$carry/usr/share/lintian"

# The .pc files name /usr; make them relative to where they lie so that
# pkg-config (run by CMake) points into the carry, wherever it is unpacked.
# (Abseil's CMake files already locate themselves.)
while IFS= read -r pc; do
  rel=$(realpath --relative-to="$(dirname "$pc")" "$carry/usr")
  sed -i -e "s|^prefix=.*|prefix=\${pcfiledir}/$rel|" -e 's|=/usr/|=${prefix}/|' "$pc"
done < <(find "$carry/usr" -name '*.pc')

# Fixtures of the cuda tests: the tiny SDXL model and its float32 reference,
# and the CLIP vocabulary the training-loop tests tokenize with.
for f in tiny_sdxl.safetensors tiny_sdxl_reference.safetensors; do
  cp "$fixtures/$f" "$carry/fixtures/"
done
cp -r "$fixtures/clip" "$carry/fixtures/"

size_mib=$(du -sm "$carry" | cut -f1)
echo "device_carry: ${size_mib} MiB ($(find "$carry" -type f | wc -l) files): ${packages[*]} + fixtures"
if (( size_mib > limit_mib )); then
  echo "device_carry is over ${limit_mib} MiB: the device machine receives at most 64 MiB with the checkout" >&2
  exit 1
fi
