// Makes ONNX models from PyTorch, tf2onnx and jax2tf exports load in OpenCV
// 4.6's dnn module (Debian 12), whose ONNX importer lacks or mishandles
// operators that vision transformers and ConvNeXts use. Measured against
// libopencv-dnn 4.6.0 with one-operator models (see core/data/wd14_tagger.h):
//  - not implemented: LayerNormalization (opset 17), Gelu (opset 20), Einsum;
//    registered here as custom layers (cv::dnn::LayerFactory), which the
//    importer uses for an operator it has no parser of its own for;
//  - wrong: Mul by a constant that is not a scalar (a channel vector on the
//    last axis, as layer-scale and decomposed-LayerNorm gammas are) fails in
//    the importer's Scale layer; such nodes are renamed to lorad's own
//    broadcasting multiply before the model reaches the importer.
// Thread-safe.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace lorad::data {

// Registers the custom layers once per process (later calls do nothing).
void RegisterOnnxCompatLayers();

struct OnnxRewrite {
  std::string model;         // the serialized model to give the importer
  int broadcast_muls = 0;    // Mul nodes renamed to LoradBroadcastMul
};

// Parses the serialized ModelProto in `bytes` and renames the Mul nodes whose
// one operand is a constant (initializer or Constant node) of more than one
// element. INVALID_ARGUMENT naming `name` when `bytes` is not an ONNX model.
absl::StatusOr<OnnxRewrite> RewriteForOpenCv(const std::string& bytes, const std::string& name);

}  // namespace lorad::data
