#!/usr/bin/env bash
# The lorad demo, end to end on one machine (CPU is enough; a GPU is used when
# the build has a CUDA LibTorch):
#   build -> start lorad on loopback with a fresh data dir and a token ->
#   make a tiny SDXL checkpoint (lorad-mkmodel), serve it from a loopback web
#   server and `loractl models pull` it (as a box pulls from Hugging Face) ->
#   a small generated dataset -> loractl submit -> loractl tail (live progress) -> loractl fetch the LoRA -> stop lorad.
# Usage: deploy/demo.sh [BUILD_DIR]   (default: build; set STEPS=N for a longer run)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
STEPS=${STEPS:-30}
PORT=${LORAD_DEMO_PORT:-50651}

if [ -z "${LORAD_DEMO_NO_BUILD:-}" ]; then  # set it to use binaries already built in BUILD_DIR
  ./deploy/install-deps.sh
  if [ ! -f "$BUILD/build.ninja" ]; then
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
  fi
  cmake --build "$BUILD" --parallel "$(nproc)" --target lorad loractl lorad-train lorad-mkmodel lorad-inspect
fi
LORAD="$BUILD/server/lorad"
LORACTL="$BUILD/client/loractl"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lorad-demo.XXXXXX")
DATA="$WORK/data"
mkdir -p "$DATA/models" "$WORK/www"
echo "== work dir: $WORK"

# 1. A tiny SDXL checkpoint (random weights, real key layout) on a local web
# server; the daemon pulls it in step 4. Its demo tokenizer goes to the models
# root (a real SDXL reads the CLIP tokenizers from the Hugging Face cache).
"$BUILD/core/models/lorad-mkmodel" --arch sdxl --size tiny "$WORK/www/tiny_sdxl.safetensors"
mv "$WORK/www/tiny_sdxl.tokenizer" "$DATA/models/tiny_sdxl.tokenizer"
MODEL_SHA=$(sha256sum "$WORK/www/tiny_sdxl.safetensors" | cut -d' ' -f1)
WWW_PORT=${LORAD_DEMO_WWW_PORT:-50652}
python3 -m http.server "$WWW_PORT" --bind 127.0.0.1 --directory "$WORK/www" 2> "$WORK/www.log" &
WWW_PID=$!

# 2. A small generated dataset in the kohya folder layout (<repeats>_<name>/ with captions).
python3 - "$WORK/dataset/4_shapes" <<'PY'
import os, struct, sys, zlib
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
def png(path, w, h, pixel):
    rows = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(w)) for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
colors = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 200, 30)]
for i, (r, g, b) in enumerate(colors):
    def pixel(x, y, r=r, g=g, b=b, i=i):
        inside = (x - 32) ** 2 + (y - 32) ** 2 < (12 + 3 * i) ** 2
        return (r, g, b) if inside else (245, 245, 240)
    png(f"{out}/shape{i}.png", 64, 64, pixel)
    with open(f"{out}/shape{i}.txt", "w") as f:
        f.write(f"a {['red', 'green', 'blue', 'yellow'][i]} circle, plain background")
PY

# 3. The training config: kohya option names; paths are relative to lorad's roots.
cat > "$WORK/demo.toml" <<TOML
pretrained_model_name_or_path = "tiny"
tokenizer_path = "tiny_sdxl.tokenizer"
output_name = "demo"
caption_extension = ".txt"
resolution = "64"
network_module = "networks.lora"
network_dim = 8
network_alpha = 8
network_train_unet_only = true
learning_rate = 1e-3
optimizer_type = "AdamW"
train_batch_size = 2
max_train_steps = $STEPS
save_every_n_steps = 10
seed = 42
TOML

# 4. Start lorad on loopback with a fresh data dir and a token.
export LORAD_SERVER="127.0.0.1:$PORT"
export LORAD_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
"$LORAD" --listen "$LORAD_SERVER" --data-dir "$DATA" --slots 1 --grace-s 10 2> "$WORK/lorad.log" &
LORAD_PID=$!
trap 'kill -TERM $LORAD_PID $WWW_PID 2>/dev/null || true; wait $LORAD_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$DATA/lorad.port" ] && break; sleep 0.1; done
"$LORACTL" info

# The daemon downloads the model itself (resumable, sha256 verified), as it
# would from hf://ORG/REPO/FILE on a rented box.
"$LORACTL" models pull "http://127.0.0.1:$WWW_PORT/tiny_sdxl.safetensors" --name tiny --sha256 "$MODEL_SHA" --wait
"$LORACTL" models ls

# 5. Submit (uploads the dataset folder), tail to the end, fetch the LoRA.
JOB=$("$LORACTL" submit "$WORK/demo.toml" --dataset "$WORK/dataset" --name demo)
echo "== job $JOB"
"$LORACTL" tail "$JOB"
"$LORACTL" show "$JOB"
"$LORACTL" fetch "$JOB" --out "$WORK/out"
ls -l "$WORK/out"
# What ComfyUI/A1111/Forge will see: kohya keys and ss_* metadata.
for lora in "$WORK/out"/*.safetensors; do "$BUILD/core/models/lorad-inspect" "$lora"; break; done

# 6. Stop the daemon (running jobs would save their state and resume on restart).
kill -TERM "$LORAD_PID" "$WWW_PID"
wait "$LORAD_PID"
trap - EXIT
echo "== done: LoRA in $WORK/out, daemon log in $WORK/lorad.log, data dir $DATA"
