// The documented limits on what lorad accepts from configs, dataset configs,
// images, caption and prompt files. Every boundary that reads such input checks
// against these, so hostile or careless input is an error naming the key or
// file and the limit, never an allocation of terabytes or a crash. They are far
// above what any real SD 1.x / SDXL training run uses.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lorad {

// Largest training resolution, bucket size or preview size, per side, in
// pixels. 8192 px is a 1024x1024 latent: 8x SDXL's native 1024 and 16x SD1's
// 512. Beyond it the UNet's attention and the VAE need far more memory than any
// GPU has, and a single float RGB image is already 768 MiB.
inline constexpr int64_t kMaxResolution = 8192;

// Largest raw decode of one image: pixels x channels x bytes per channel, as the
// file's header declares them, before a byte is decoded. An 8-bit RGBA image of
// 8192x8192 fits exactly; a 16-bit one (a "decompression bomb" of a few KiB)
// does not. Prefetch threads decode several images at once, so this is kept to
// a fraction of a machine's memory.
inline constexpr int64_t kMaxImageDecodeBytes = int64_t{256} << 20;

// Repeats of one image folder, and images x repeats in one epoch (the samples
// of an epoch; the steps per epoch are at most this divided by the batch size).
// 10 million samples is 100,000 images at 100 repeats.
inline constexpr int64_t kMaxRepeats = 100000;
inline constexpr int64_t kMaxSamplesPerEpoch = 10000000;

// Optimizer steps and epochs a run may ask for, and the largest batch.
inline constexpr int64_t kMaxTrainSteps = 100000000;
inline constexpr int64_t kMaxTrainEpochs = 1000000;
inline constexpr int64_t kMaxBatchSize = 1024;

// Text sizes. A caption of 225 CLIP tokens is about 1 KiB of text: caption
// files, prefixes, suffixes, class tokens and prompts are refused above 16 KiB;
// any other config string (paths, comments, metadata) above 64 KiB.
inline constexpr size_t kMaxCaptionBytes = 16 << 10;
inline constexpr size_t kMaxCaptionFileBytes = 64 << 10;  // several lines with enable_wildcard
inline constexpr size_t kMaxConfigStringBytes = 64 << 10;

// Sample prompt files: bytes and prompts (each prompt is a full sampling run).
inline constexpr size_t kMaxSamplePromptsBytes = 1 << 20;
inline constexpr size_t kMaxSamplePrompts = 1000;
// Preview LoRA strength (prompt option --lora_strength, config sample_lora_strength):
// the network multiplier, negative to invert; beyond this a preview is noise.
inline constexpr double kMaxPreviewLoraStrength = 10.0;

}  // namespace lorad
