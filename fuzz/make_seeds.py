#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/NAME/seed-*).

Run once when a parser learns new syntax; the files are committed. Crashes found
by a fuzzer are added beside them as crash-* files by hand and never removed.
Standard library only (the event seeds are protobuf wire bytes built here).
"""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, pad=0):
    header, data, off = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    put("safetensors_header", "empty", safetensors([]))
    put("safetensors_header", "two", safetensors(
        [("a.weight", "F32", [2, 2], b"\0" * 16), ("b.alpha", "BF16", [], b"\0\0")], {"ss_network_dim": "4"}, pad=5))
    put("safetensors_header", "lora", safetensors([
        ("lora_unet_down_blocks_0_attentions_0_proj_in.alpha", "F16", [], b"\0\0"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "F16", [4, 8], b"\0" * 64),
        ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", "F16", [8, 4], b"\0" * 64),
    ], {"ss_network_module": "networks.lora", "ss_network_alpha": "4", "fixture_config": "{\"unet\": {}}"}))
    put("safetensors_header", "dtypes", safetensors(
        [(d, d, [1], b"\0" * s) for d, s in [("BOOL", 1), ("U8", 1), ("I8", 1), ("F8_E5M2", 1), ("F8_E4M3", 1),
                                             ("I16", 2), ("U16", 2), ("F16", 2), ("I32", 4), ("U32", 4),
                                             ("F64", 8), ("I64", 8), ("U64", 8)]]))
    put("safetensors_header", "zero_dim", safetensors([("z", "F32", [0, 3], b"")]))


def config_seeds():
    put("train_config", "sdxl", """\
pretrained_model_name_or_path = "models/illustrious.safetensors"
train_data_dir = "datasets/cats"
output_dir = "out"
output_name = "cats"
resolution = "1024,1024"
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=8", "conv_alpha=4", "dora_wd=True"]
optimizer_type = "AdamW8bit"
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0.05
max_train_epochs = 10
train_batch_size = 4
gradient_accumulation_steps = 2
mixed_precision = "bf16"
save_precision = "fp16"
min_snr_gamma = 5.0
noise_offset = 0.0357
keep_tokens = 1
shuffle_caption = true
clip_skip = 2
enable_bucket = true
min_bucket_reso = 512
max_bucket_reso = 2048
cache_latents = true
gradient_checkpointing = true
seed = 42
""")
    put("train_config", "sections", """\
[model_arguments]
pretrained_model_name_or_path = "models/sd15.safetensors"
v2 = false
[optimizer_arguments]
optimizer_type = "Prodigy"
learning_rate = 1.0
optimizer_args = ["decouple=True", "use_bias_correction=True", "d_coef=2"]
[training_arguments]
max_train_steps = 1600
sample_every_n_steps = 200
sample_prompts = "prompts.txt"
[dataset_arguments]
resolution = 512
""")
    put("train_config", "override", "network_dim = 8\n\0network_alpha=4")


def dataset_seeds():
    put("dataset_config", "kohya", """\
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 1024
batch_size = 2
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 2048

  [[datasets.subsets]]
  image_dir = "img/10_cat"
  num_repeats = 10
  class_tokens = "cat"
  keep_tokens_separator = "|||"
  caption_prefix = "masterpiece, "

  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  num_repeats = 1
""")
    put("dataset_config", "flat", '[[datasets]]\nresolution = [768, 512]\n[[datasets.subsets]]\nimage_dir = "a"\n')
    put("dataset_config", "resolution", "512x768")


def caption_seeds():
    put("caption", "tags", b"\x01\x00" * 40 + b"1girl, solo, long hair ||| smile, looking at viewer, {red|blue} eyes")
    put("caption", "first_line", b"\xff" * 64 + b"a photo of a cat\nsecond line\n")


def prompt_seeds():
    put("sample_prompts", "kohya", """\
# comment
masterpiece, 1girl, solo --n lowres, bad anatomy --w 832 --h 1216 --d 42 --l 7.5 --s 28
a cat sitting on a chair --w 512 --h 512 --ss euler_a
""")


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    return key + (varint(payload) if wire == 0 else varint(len(payload)) + payload)


def event_seeds():
    # Generic protobuf messages with varint and length-delimited fields: the
    # decoder must frame them and reject the ones that do not parse.
    a = field(1, 0, 7) + field(2, 0, 1733000000000) + field(3, 2, b"training step")
    b = field(1, 0, 1) + field(4, 2, field(1, 0, 100) + field(2, 2, b"loss"))
    put("event_stream", "frames", b"\x10" + varint(len(a)) + a + varint(len(b)) + b)
    put("event_stream", "partial", b"\x03" + varint(len(a)) + a[:-2])


def png(width, height, color_type=2, depth=8):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    raw = b"".join(b"\0" + b"\x80" * (width * channels * depth // 8) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def image_seeds():
    put("image_header", "png", png(4, 3))
    put("image_header", "png_rgba16", png(2, 2, 6, 16))
    # A minimal JPEG structure: SOI, APP1 EXIF with orientation 6, SOF0, SOS, EOI.
    tiff = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 6) + b"\0\0\0\0"
    app1 = b"Exif\0\0" + tiff
    sof = struct.pack(">BHHB", 8, 3, 4, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = struct.pack(">B", 3) + b"\x01\x00\x02\x11\x03\x11" + b"\x00\x3f\x00"
    jpeg = (b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + b"\xff\xc0" + struct.pack(">H", len(sof) + 2)
            + sof + b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos + b"\x12\x34" + b"\xff\xd9")
    put("image_header", "jpeg_exif", jpeg)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" + (3).to_bytes(3, "little") + (2).to_bytes(3, "little")
    put("image_header", "webp", b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x)
    dib = struct.pack("<IiiHHIIiiII", 40, 2, 2, 1, 24, 0, 16, 2835, 2835, 0, 0)
    bmp_pixels = b"\0" * 16
    put("image_header", "bmp", b"BM" + struct.pack("<IHHI", 14 + len(dib) + len(bmp_pixels), 0, 0, 14 + len(dib)) + dib + bmp_pixels)


def sweep_seeds():
    put("sweep", "grid", """\
dataset = "datasets/cats"
optimizer_type = "AdamW"
learning_rate = 1e-4
output_name = "cats"
[sweep]
mode = "grid"
dataset = ["datasets/cats", "datasets/dogs"]
learning_rate = [1e-4, 5e-4]
network_args = [["algo=lora"], ["algo=lora", "dora_wd=True"]]
""")
    put("sweep", "zip", """\
[optimizer_arguments]
optimizer_type = "Lion"
[sweep]
mode = "zip"
"optimizer_arguments.learning_rate" = [1e-5, 3e-5]
network_dim = [8, 16]
""")


if __name__ == "__main__":
    safetensors_seeds()
    config_seeds()
    dataset_seeds()
    caption_seeds()
    prompt_seeds()
    event_seeds()
    image_seeds()
    sweep_seeds()
