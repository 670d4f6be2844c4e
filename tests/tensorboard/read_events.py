#!/usr/bin/env python3
"""lorad-train's TensorBoard log, read back by TensorBoard's own reader.

Trains a tiny SD1.5 model (lorad-mkmodel) for 6 steps over 3 epochs with
log_with = "tensorboard", a log_prefix and two preview prompts of different
sizes, with --events-fd writing lorad's own event stream next to it. Then:
  - the run folder is <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/network_train
    with one events.out.tfevents.<secs>.<host>.<pid>.0 file of lorad-train's pid;
  - TensorBoard's record reader (masked CRC-32C checked on every record) reads
    the whole file, and its first record has file_version "brain.Event:2";
  - EventAccumulator finds exactly kohya's tags, at the steps lorad reported,
    with the values of lorad's own Progress events (as float32);
  - loss/epoch_average is the last step's epoch average, at the 1-based epoch;
  - every preview is an image under sample_<prompt index> at its step, whose
    PNG bytes are the preview file's and decode to the prompt's size.

Exit 77 (ctest: skipped) when this Python lacks the packages of
tests/python-requirements.txt, unless LORAD_REQUIRE_PYTHON_TESTS=1 (deploy/test.sh).
"""
import argparse
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zlib

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors as tb_errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
except ImportError as e:
    print(f"read_events.py: {e}; install tests/python-requirements.txt into this Python "
          f"({sys.executable}), e.g. with deploy/test.sh, which makes build/pyenv", file=sys.stderr)
    sys.exit(1 if os.environ.get("LORAD_REQUIRE_PYTHON_TESTS") == "1" else 77)

STEPS_PER_EPOCH = 2
EPOCHS = 3
# (width, height) of each preview prompt, as the prompt file asks.
PROMPT_SIZES = [(64, 64), (128, 64)]
EXPECTED_SCALAR_TAGS = {
    "loss/current", "loss/average", "lr/textencoder", "lr/unet", "lr/group1", "loss/epoch_average",
}


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def write_png(path, width, height, seed):
    """An 8-bit RGB PNG written by hand: the test needs no imaging library to make its data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            inside = (x - width // 2) ** 2 + (y - height // 2) ** 2 < (width // 4 + seed) ** 2
            rows += bytes((250, 40 * seed % 256, 30) if inside else (40 * seed % 256, 90, 200))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(rows)))
                + chunk(b"IEND", b""))


def lorad_event_class(descriptor_path):
    """lorad.v1.Event from the FileDescriptorSet protoc wrote for proto/lorad/v1/events.proto."""
    files = descriptor_pb2.FileDescriptorSet()
    with open(descriptor_path, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("lorad.v1.Event"))


def read_lorad_events(path, event_class):
    """The --events-fd stream: varint byte length, then the serialized Event (proto/event_stream.h)."""
    with open(path, "rb") as f:
        data = f.read()
    events, at = [], 0
    while at < len(data):
        length, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        event = event_class()
        event.ParseFromString(data[at:at + length])
        events.append(event)
        at += length
    return events


def float32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def train(args, root):
    model = os.path.join(root, "tiny_sd15.safetensors")
    subprocess.run([args.mkmodel, "--arch", "sd15", "--size", "tiny", "--seed", "3", model], check=True)
    images = os.path.join(root, "images", "1_shape")
    os.makedirs(images)
    for i in range(STEPS_PER_EPOCH):
        write_png(os.path.join(images, f"img{i}.png"), 64, 64, i + 1)
        with open(os.path.join(images, f"img{i}.txt"), "w") as f:
            f.write(f"a shape, circle {i}, plain background")
    prompts = os.path.join(root, "prompts.txt")
    with open(prompts, "w") as f:
        for i, (w, h) in enumerate(PROMPT_SIZES):
            f.write(f"a shape, circle {i} --w {w} --h {h} --s 2 --d {5 + i}\n")
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(f'''pretrained_model_name_or_path = "{model}"
device = "cpu"
output_dir = "{root}/output"
output_name = "tb"
train_data_dir = "{root}/images"
caption_extension = ".txt"
resolution = "64"
network_module = "networks.lora"
network_dim = 4
network_alpha = 4
unet_lr = 1e-3
text_encoder_lr = 5e-4
lr_scheduler = "linear"
optimizer_type = "AdamW"
train_batch_size = 1
max_train_epochs = {EPOCHS}
seed = 1
sample_prompts = "{prompts}"
sample_every_n_steps = 3
sample_at_first = true
sample_sampler = "euler"
logging_dir = "{root}/logs"
log_with = "tensorboard"
log_prefix = "tbtest_"
wandb_run_name = "ignored"
''')
    events_path = os.path.join(root, "events.bin")
    events_fd = os.open(events_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with open(os.path.join(root, "train.log"), "wb") as log:
        proc = subprocess.Popen([args.lorad_train, "--config_file", config, "--events-fd", str(events_fd)],
                                stdout=log, stderr=subprocess.STDOUT, pass_fds=(events_fd,))
        os.close(events_fd)
        code = proc.wait(timeout=800)
    with open(os.path.join(root, "train.log"), errors="replace") as f:
        output = f.read()
    check(code == 0, f"lorad-train exited with {code}:\n{output}")
    check("unknown config key" not in output, f"a logging key was not recognised:\n{output}")
    return proc.pid, events_path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lorad-train", required=True)
    parser.add_argument("--mkmodel", required=True)
    parser.add_argument("--events-descriptor", required=True)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="lorad_tb_reader_")
    try:
        pid, events_path = train(args, root)
        lorad_events = read_lorad_events(events_path, lorad_event_class(args.events_descriptor))
        verify(root, pid, lorad_events)
    finally:
        if args.keep:
            print(f"work folder: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("tensorboard reader test: OK")


def verify(root, pid, lorad_events):
    progress = [e.progress for e in lorad_events if e.WhichOneof("kind") == "progress"]
    samples = [e.sample for e in lorad_events if e.WhichOneof("kind") == "sample"]
    check([p.step for p in progress] == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1)),
          f"lorad's Progress steps: {[p.step for p in progress]}")
    check(len(samples) >= 2 * len(PROMPT_SIZES), f"expected previews at several steps, got {len(samples)}")

    # The folder layout kohya's prepare_accelerator + accelerate's tracker make.
    runs = os.listdir(os.path.join(root, "logs"))
    check(len(runs) == 1 and re.fullmatch(r"tbtest_\d{14}", runs[0]), f"run folders: {runs}")
    run_dir = os.path.join(root, "logs", runs[0], "network_train")
    files = os.listdir(run_dir)
    pattern = r"events\.out\.tfevents\.\d{10}\." + re.escape(socket.gethostname()) + rf"\.{pid}\.0"
    check(len(files) == 1 and re.fullmatch(pattern, files[0]), f"event files: {files} (pattern {pattern})")

    # TensorBoard's own record reader: every length and data checksum verified.
    reader = PyRecordReader_New(os.path.join(run_dir, files[0]))
    records = []
    while True:
        try:
            reader.GetNext()
        except tb_errors.OutOfRangeError:
            break
        records.append(reader.record())
    first = event_pb2.Event.FromString(records[0])
    check(first.file_version == "brain.Event:2", f"first record: {first}")

    acc = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    check(set(tags["scalars"]) == EXPECTED_SCALAR_TAGS, f"scalar tags: {sorted(tags['scalars'])}")
    check(set(tags["images"]) == {f"sample_{i}" for i in range(len(PROMPT_SIZES))}, f"image tags: {tags['images']}")

    def series(tag):
        return [(s.step, s.value) for s in acc.Scalars(tag)]

    def lr_of(p, group):
        return next(lr.lr for lr in p.lr if lr.group == group)

    expected = {
        "loss/current": [(p.step, float32(p.loss)) for p in progress],
        "loss/average": [(p.step, float32(p.loss_avg)) for p in progress],
        "lr/textencoder": [(p.step, float32(lr_of(p, "text_encoder"))) for p in progress],
        "lr/unet": [(p.step, float32(lr_of(p, "unet"))) for p in progress],
        # kohya's for-else: the second group again, by number.
        "lr/group1": [(p.step, float32(lr_of(p, "unet"))) for p in progress],
        "loss/epoch_average": [(p.epoch, float32(p.loss_avg)) for p in progress if p.step % STEPS_PER_EPOCH == 0],
    }
    for tag, want in expected.items():
        check(series(tag) == want, f"{tag}: TensorBoard has {series(tag)}, lorad reported {want}")
    lrs = [v for _, v in series("lr/unet")]
    check(lrs[0] > lrs[-1] > 0, f"the linear schedule should decay: {lrs}")

    image_count = 0
    for i, (width, height) in enumerate(PROMPT_SIZES):
        images = acc.Images(f"sample_{i}")
        mine = [s for s in samples if s.prompt_index == i]
        check([im.step for im in images] == [s.step for s in mine],
              f"sample_{i} steps: TensorBoard {[im.step for im in images]}, lorad {[s.step for s in mine]}")
        for image, sample in zip(images, mine):
            with open(sample.path, "rb") as f:
                check(image.encoded_image_string == f.read(), f"sample_{i} at {image.step}: not the preview's bytes")
            decoded = Image.open(io.BytesIO(image.encoded_image_string))
            check(decoded.format == "PNG" and decoded.size == (width, height) and
                  (image.width, image.height) == (width, height),
                  f"sample_{i} at {image.step}: {decoded.format} {decoded.size}, "
                  f"Summary.Image {image.width}x{image.height}, expected {width}x{height}")
            decoded.load()
            image_count += 1
    check(0 in [s.step for s in samples], "sample_at_first: no preview at step 0")

    scalar_count = sum(len(acc.Scalars(tag)) for tag in EXPECTED_SCALAR_TAGS)
    check(len(records) == 1 + scalar_count + image_count,
          f"{len(records)} records, expected the version + {scalar_count} scalars + {image_count} images")
    print(f"{len(records)} records: {scalar_count} scalars under {len(EXPECTED_SCALAR_TAGS)} tags, "
          f"{image_count} images, lorad-train pid {pid}")


if __name__ == "__main__":
    main()
