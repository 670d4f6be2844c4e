#include "core/data/onnx_compat.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/dnn/layer.details.hpp>
#include <opencv2/dnn/shape_utils.hpp>

#include "absl/strings/str_cat.h"
#include "core/data/onnx_subset.pb.h"

namespace lorad::data {
namespace {

using cv::dnn::MatShape;

// Attributes the rewrite adds: which node inputs are constants (1) and, for
// each constant, its ONNX dims (OpenCV stores a 1-D constant as a 2-D Mat).
constexpr char kInputKinds[] = "lorad_input_kinds";
constexpr char kConstDims[] = "lorad_const_dims";
constexpr char kConstRanks[] = "lorad_const_ranks";

std::vector<int> IntsParam(const cv::dnn::LayerParams& params, const std::string& key) {
  std::vector<int> out;
  if (!params.has(key)) return out;
  const cv::dnn::DictValue& v = params.get(key);
  for (int i = 0; i < v.size(); ++i) out.push_back(v.get<int>(i));
  return out;
}

// A node's operands in ONNX order: OpenCV hands constant inputs to a custom
// layer as blobs and the others as inputs; the rewrite's kinds put them back.
struct OperandLayout {
  std::vector<int> kinds;               // per ONNX input: 1 constant
  std::vector<std::vector<int>> dims;   // per constant, its ONNX dims
  void Read(const cv::dnn::LayerParams& params) {
    kinds = IntsParam(params, kInputKinds);
    const std::vector<int> flat = IntsParam(params, kConstDims);
    const std::vector<int> ranks = IntsParam(params, kConstRanks);
    size_t at = 0;
    for (int rank : ranks) {
      dims.emplace_back(flat.begin() + static_cast<long>(at), flat.begin() + static_cast<long>(at + rank));
      at += static_cast<size_t>(rank);
    }
  }
};

struct Operand {
  const float* data = nullptr;
  std::vector<int> shape;
};

MatShape ShapeOf(const cv::Mat& m) { return cv::dnn::shape(m); }

// Orders inputs and blobs as the ONNX node listed them.
std::vector<Operand> Operands(const OperandLayout& layout, const std::vector<cv::Mat>& inputs,
                              const std::vector<cv::Mat>& blobs) {
  std::vector<Operand> out;
  size_t in = 0, blob = 0;
  const size_t n = layout.kinds.empty() ? inputs.size() + blobs.size() : layout.kinds.size();
  for (size_t i = 0; i < n; ++i) {
    const bool constant = layout.kinds.empty() ? i >= inputs.size() : layout.kinds[i] == 1;
    if (constant) {
      if (blob >= blobs.size()) CV_Error(cv::Error::StsBadArg, "lorad onnx compat: a constant operand is missing");
      Operand op{blobs[blob].ptr<float>(), ShapeOf(blobs[blob])};
      if (blob < layout.dims.size()) op.shape = layout.dims[blob];
      ++blob;
      out.push_back(op);
    } else {
      if (in >= inputs.size()) CV_Error(cv::Error::StsBadArg, "lorad onnx compat: an input operand is missing");
      out.push_back({inputs[in].ptr<float>(), ShapeOf(inputs[in])});
      ++in;
    }
  }
  return out;
}

std::vector<MatShape> OperandShapes(const OperandLayout& layout, const std::vector<MatShape>& inputs,
                                    const std::vector<cv::Mat>& blobs) {
  std::vector<MatShape> out;
  size_t in = 0, blob = 0;
  const size_t n = layout.kinds.empty() ? inputs.size() + blobs.size() : layout.kinds.size();
  for (size_t i = 0; i < n; ++i) {
    const bool constant = layout.kinds.empty() ? i >= inputs.size() : layout.kinds[i] == 1;
    if (constant) {
      out.push_back(blob < layout.dims.size() ? layout.dims[blob] : ShapeOf(blobs.at(blob)));
      ++blob;
    } else {
      out.push_back(inputs.at(in++));
    }
  }
  return out;
}

int64_t Total(const std::vector<int>& shape) {
  int64_t n = 1;
  for (int d : shape) n *= d;
  return n;
}

std::vector<int64_t> Strides(const std::vector<int>& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

// numpy broadcasting of two shapes (right-aligned).
MatShape Broadcast(const MatShape& a, const MatShape& b) {
  const size_t rank = std::max(a.size(), b.size());
  MatShape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) {
      CV_Error(cv::Error::StsBadSize, "lorad onnx compat: Mul operands do not broadcast");
    }
    out[i] = std::max(da, db);
  }
  return out;
}

// Mul with numpy broadcasting (the rewrite sends Mul-by-constant-vector here).
class BroadcastMulLayer : public cv::dnn::Layer {
 public:
  explicit BroadcastMulLayer(const cv::dnn::LayerParams& params) : Layer(params) { layout_.Read(params); }
  static cv::Ptr<cv::dnn::Layer> create(cv::dnn::LayerParams& params) {
    return cv::makePtr<BroadcastMulLayer>(params);
  }
  bool getMemoryShapes(const std::vector<MatShape>& inputs, int, std::vector<MatShape>& outputs,
                       std::vector<MatShape>&) const override {
    const auto shapes = OperandShapes(layout_, inputs, blobs);
    CV_Assert(shapes.size() == 2);
    outputs = {Broadcast(shapes[0], shapes[1])};
    return false;
  }
  void forward(cv::InputArrayOfArrays inputs_arr, cv::OutputArrayOfArrays outputs_arr,
               cv::OutputArrayOfArrays) override {
    std::vector<cv::Mat> inputs, outputs;
    inputs_arr.getMatVector(inputs);
    outputs_arr.getMatVector(outputs);
    const auto ops = Operands(layout_, inputs, blobs);
    const std::vector<int> out_shape = ShapeOf(outputs[0]);
    float* out = outputs[0].ptr<float>();
    const int64_t total = Total(out_shape);
    const int64_t na = Total(ops[0].shape), nb = Total(ops[1].shape);
    // Fast paths: equal sizes, or one operand repeating over the trailing axes.
    if (na == total && total % nb == 0 && TrailingMatch(out_shape, ops[1].shape)) {
      for (int64_t i = 0; i < total; ++i) out[i] = ops[0].data[i] * ops[1].data[i % nb];
      return;
    }
    if (nb == total && total % na == 0 && TrailingMatch(out_shape, ops[0].shape)) {
      for (int64_t i = 0; i < total; ++i) out[i] = ops[0].data[i % na] * ops[1].data[i];
      return;
    }
    const size_t rank = out_shape.size();
    auto strides_for = [&](const std::vector<int>& s) {
      std::vector<int64_t> st(rank, 0);
      const std::vector<int64_t> own = Strides(s);
      for (size_t i = 0; i < s.size(); ++i) {
        const size_t axis = rank - s.size() + i;
        st[axis] = s[i] == 1 ? 0 : own[i];
      }
      return st;
    };
    const auto sa = strides_for(ops[0].shape), sb = strides_for(ops[1].shape);
    std::vector<int> index(rank, 0);
    for (int64_t i = 0; i < total; ++i) {
      int64_t oa = 0, ob = 0;
      for (size_t d = 0; d < rank; ++d) {
        oa += index[d] * sa[d];
        ob += index[d] * sb[d];
      }
      out[i] = ops[0].data[oa] * ops[1].data[ob];
      for (int d = static_cast<int>(rank) - 1; d >= 0; --d) {
        if (++index[d] < out_shape[d]) break;
        index[d] = 0;
      }
    }
  }

 private:
  // `small` equals the trailing axes of `out` (leading 1s ignored).
  static bool TrailingMatch(const std::vector<int>& out, std::vector<int> small) {
    while (!small.empty() && small.front() == 1 && small.size() > 0) small.erase(small.begin());
    if (small.size() > out.size()) return false;
    return std::equal(small.begin(), small.end(), out.end() - static_cast<long>(small.size()));
  }
  OperandLayout layout_;
};

// ONNX LayerNormalization (opset 17): normalizes over the axes from `axis` on.
class LayerNormLayer : public cv::dnn::Layer {
 public:
  explicit LayerNormLayer(const cv::dnn::LayerParams& params) : Layer(params) {
    axis_ = params.get<int>("axis", -1);
    epsilon_ = params.get<float>("epsilon", 1e-5f);
    if (params.has("stash_type") && params.get<int>("stash_type") != 1) {
      CV_Error(cv::Error::StsNotImplemented, "LayerNormalization: only stash_type 1 (float32) is supported");
    }
    layout_.Read(params);
  }
  static cv::Ptr<cv::dnn::Layer> create(cv::dnn::LayerParams& params) { return cv::makePtr<LayerNormLayer>(params); }
  bool getMemoryShapes(const std::vector<MatShape>& inputs, int, std::vector<MatShape>& outputs,
                       std::vector<MatShape>&) const override {
    outputs = {inputs.at(0)};
    return false;
  }
  void forward(cv::InputArrayOfArrays inputs_arr, cv::OutputArrayOfArrays outputs_arr,
               cv::OutputArrayOfArrays) override {
    std::vector<cv::Mat> inputs, outputs;
    inputs_arr.getMatVector(inputs);
    outputs_arr.getMatVector(outputs);
    const auto ops = Operands(layout_, inputs, blobs);
    const std::vector<int>& shape = ops[0].shape;
    const int rank = static_cast<int>(shape.size());
    const int axis = axis_ < 0 ? axis_ + rank : axis_;
    if (axis < 0 || axis >= rank) CV_Error(cv::Error::StsOutOfRange, "LayerNormalization: axis out of range");
    int64_t inner = 1;
    for (int d = axis; d < rank; ++d) inner *= shape[d];
    const int64_t outer = Total(shape) / inner;
    const float* scale = ops.size() > 1 ? ops[1].data : nullptr;
    const float* bias = ops.size() > 2 ? ops[2].data : nullptr;
    const int64_t ns = ops.size() > 1 ? Total(ops[1].shape) : 0, nbias = ops.size() > 2 ? Total(ops[2].shape) : 0;
    const float* x = ops[0].data;
    float* y = outputs[0].ptr<float>();
    for (int64_t r = 0; r < outer; ++r, x += inner, y += inner) {
      double mean = 0, var = 0;
      for (int64_t i = 0; i < inner; ++i) mean += x[i];
      mean /= static_cast<double>(inner);
      for (int64_t i = 0; i < inner; ++i) var += (x[i] - mean) * (x[i] - mean);
      var /= static_cast<double>(inner);
      const double inv = 1.0 / std::sqrt(var + epsilon_);
      for (int64_t i = 0; i < inner; ++i) {
        double v = (x[i] - mean) * inv;
        if (scale) v *= scale[ns == inner ? i : 0];
        if (bias) v += bias[nbias == inner ? i : 0];
        y[i] = static_cast<float>(v);
      }
    }
  }

 private:
  int axis_ = -1;
  float epsilon_ = 1e-5f;
  OperandLayout layout_;
};

// ONNX Gelu (opset 20): exact (erf) or the tanh approximation.
class GeluLayer : public cv::dnn::Layer {
 public:
  explicit GeluLayer(const cv::dnn::LayerParams& params) : Layer(params) {
    const std::string approximate = params.get<std::string>("approximate", "none");
    if (approximate != "none" && approximate != "tanh") {
      CV_Error(cv::Error::StsBadArg, "Gelu: approximate must be \"none\" or \"tanh\"");
    }
    tanh_ = approximate == "tanh";
  }
  static cv::Ptr<cv::dnn::Layer> create(cv::dnn::LayerParams& params) { return cv::makePtr<GeluLayer>(params); }
  bool getMemoryShapes(const std::vector<MatShape>& inputs, int, std::vector<MatShape>& outputs,
                       std::vector<MatShape>&) const override {
    outputs = {inputs.at(0)};
    return false;
  }
  void forward(cv::InputArrayOfArrays inputs_arr, cv::OutputArrayOfArrays outputs_arr,
               cv::OutputArrayOfArrays) override {
    std::vector<cv::Mat> inputs, outputs;
    inputs_arr.getMatVector(inputs);
    outputs_arr.getMatVector(outputs);
    const float* x = inputs[0].ptr<float>();
    float* y = outputs[0].ptr<float>();
    const size_t n = inputs[0].total();
    for (size_t i = 0; i < n; ++i) {
      const double v = x[i];
      y[i] = static_cast<float>(
          tanh_ ? 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)))
                : 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
    }
  }

 private:
  bool tanh_ = false;
};

// Copies `in` (shape `shape`) into `out` with its axes reordered: out axis i is in axis perm[i].
void Permute(const float* in, const std::vector<int>& shape, const std::vector<int>& perm, float* out) {
  const size_t rank = shape.size();
  const std::vector<int64_t> in_strides = Strides(shape);
  std::vector<int> out_shape(rank);
  std::vector<int64_t> stride(rank);
  for (size_t i = 0; i < rank; ++i) {
    out_shape[i] = shape[perm[i]];
    stride[i] = in_strides[perm[i]];
  }
  const int64_t total = Total(shape);
  std::vector<int> index(rank, 0);
  int64_t offset = 0;
  for (int64_t i = 0; i < total; ++i) {
    out[i] = in[offset];
    for (int d = static_cast<int>(rank) - 1; d >= 0; --d) {
      offset += stride[d];
      if (++index[d] < out_shape[d]) break;
      offset -= stride[d] * out_shape[d];
      index[d] = 0;
    }
  }
}

// ONNX Einsum with two operands and no ellipsis or repeated index: batched
// matrix products, which is what attention exports use (bhqd,bhkd->bhqk).
class EinsumLayer : public cv::dnn::Layer {
 public:
  explicit EinsumLayer(const cv::dnn::LayerParams& params) : Layer(params) {
    layout_.Read(params);
    std::string eq;
    for (char c : params.get<std::string>("equation", "")) {
      if (c != ' ') eq.push_back(c);
    }
    const size_t arrow = eq.find("->");
    const std::string lhs = eq.substr(0, arrow);
    const size_t comma = lhs.find(',');
    if (eq.find("...") != std::string::npos || comma == std::string::npos ||
        lhs.find(',', comma + 1) != std::string::npos) {
      CV_Error(cv::Error::StsNotImplemented,
               "Einsum \"" + eq + "\": lorad supports two operands without \"...\" (batched matrix products)");
    }
    a_ = lhs.substr(0, comma);
    b_ = lhs.substr(comma + 1);
    if (arrow != std::string::npos) {
      out_ = eq.substr(arrow + 2);
    } else {  // implicit output: the letters used once, in alphabetical order
      std::map<char, int> count;
      for (char c : a_ + b_) ++count[c];
      for (const auto& [c, n] : count) {
        if (n == 1) out_.push_back(c);
      }
    }
    for (const std::string* s : {&a_, &b_, &out_}) {
      if (std::set<char>(s->begin(), s->end()).size() != s->size()) {
        CV_Error(cv::Error::StsNotImplemented, "Einsum \"" + eq + "\": repeated index in one term (diagonal)");
      }
    }
    for (char c : a_ + b_) {
      const bool in_a = a_.find(c) != std::string::npos, in_b = b_.find(c) != std::string::npos;
      const bool in_out = out_.find(c) != std::string::npos;
      if (!in_out && !(in_a && in_b)) {
        CV_Error(cv::Error::StsNotImplemented,
                 "Einsum \"" + eq + "\": an index summed within one operand is not supported");
      }
    }
    for (char c : out_) {
      const bool in_a = a_.find(c) != std::string::npos, in_b = b_.find(c) != std::string::npos;
      if (in_a && in_b) batch_.push_back(c);
      else if (in_a) a_free_.push_back(c);
      else if (in_b) b_free_.push_back(c);
      else CV_Error(cv::Error::StsBadArg, "Einsum \"" + eq + "\": output index not in any operand");
    }
    for (char c : a_) {
      if (b_.find(c) != std::string::npos && out_.find(c) == std::string::npos) contract_.push_back(c);
    }
  }
  static cv::Ptr<cv::dnn::Layer> create(cv::dnn::LayerParams& params) { return cv::makePtr<EinsumLayer>(params); }

  bool getMemoryShapes(const std::vector<MatShape>& inputs, int, std::vector<MatShape>& outputs,
                       std::vector<MatShape>&) const override {
    const auto shapes = OperandShapes(layout_, inputs, blobs);
    CV_Assert(shapes.size() == 2);
    const auto sizes = Sizes(shapes[0], shapes[1]);
    MatShape out;
    for (char c : out_) out.push_back(sizes.at(c));
    outputs = {out};
    return false;
  }

  void forward(cv::InputArrayOfArrays inputs_arr, cv::OutputArrayOfArrays outputs_arr,
               cv::OutputArrayOfArrays) override {
    std::vector<cv::Mat> inputs, outputs;
    inputs_arr.getMatVector(inputs);
    outputs_arr.getMatVector(outputs);
    const auto ops = Operands(layout_, inputs, blobs);
    const auto sizes = Sizes(ops[0].shape, ops[1].shape);
    auto product = [&](const std::string& letters) {
      int64_t n = 1;
      for (char c : letters) n *= sizes.at(c);
      return n;
    };
    const int64_t nb = product(batch_), m = product(a_free_), k = product(contract_), n = product(b_free_);
    // A as [batch, a_free, contract], B as [batch, contract, b_free].
    cv::Mat a = Arrange(ops[0], a_, batch_ + a_free_ + contract_);
    cv::Mat b = Arrange(ops[1], b_, batch_ + contract_ + b_free_);
    cv::Mat c(1, static_cast<int>(nb * m * n), CV_32F);
    for (int64_t i = 0; i < nb; ++i) {
      cv::Mat ai(static_cast<int>(m), static_cast<int>(k), CV_32F, a.ptr<float>() + i * m * k);
      cv::Mat bi(static_cast<int>(k), static_cast<int>(n), CV_32F, b.ptr<float>() + i * k * n);
      cv::Mat ci(static_cast<int>(m), static_cast<int>(n), CV_32F, c.ptr<float>() + i * m * n);
      cv::gemm(ai, bi, 1.0, cv::noArray(), 0.0, ci);
    }
    // c is [batch, a_free, b_free]: reorder to the output's letters.
    const std::string have = batch_ + a_free_ + b_free_;
    std::vector<int> have_shape, perm;
    for (char ch : have) have_shape.push_back(sizes.at(ch));
    for (char ch : out_) perm.push_back(static_cast<int>(have.find(ch)));
    if (have_shape.empty()) {
      outputs[0].ptr<float>()[0] = c.ptr<float>()[0];
      return;
    }
    Permute(c.ptr<float>(), have_shape, perm, outputs[0].ptr<float>());
  }

 private:
  std::map<char, int> Sizes(const MatShape& a, const MatShape& b) const {
    if (a.size() != a_.size() || b.size() != b_.size()) {
      CV_Error(cv::Error::StsBadSize, "Einsum: operand rank differs from the equation");
    }
    std::map<char, int> sizes;
    auto add = [&](const std::string& letters, const MatShape& shape) {
      for (size_t i = 0; i < letters.size(); ++i) {
        auto [it, fresh] = sizes.emplace(letters[i], shape[i]);
        if (!fresh && it->second != shape[i]) {
          CV_Error(cv::Error::StsBadSize, "Einsum: an index has two sizes (broadcasting is not supported)");
        }
      }
    };
    add(a_, a);
    add(b_, b);
    return sizes;
  }
  // The operand's data with its axes in the order of `want`.
  static cv::Mat Arrange(const Operand& op, const std::string& letters, const std::string& want) {
    cv::Mat out(1, static_cast<int>(Total(op.shape)), CV_32F);
    std::vector<int> perm;
    for (char c : want) perm.push_back(static_cast<int>(letters.find(c)));
    Permute(op.data, op.shape, perm, out.ptr<float>());
    return out;
  }
  std::string a_, b_, out_, batch_, a_free_, b_free_, contract_;
  OperandLayout layout_;
};

bool HasAttribute(const lorad_onnx::NodeProto& node, const std::string& name) {
  for (const auto& a : node.attribute()) {
    if (a.name() == name) return true;
  }
  return false;
}

void AddInts(lorad_onnx::NodeProto* node, const std::string& name, const std::vector<int64_t>& values) {
  auto* a = node->add_attribute();
  a->set_name(name);
  a->set_type(7);  // INTS
  for (int64_t v : values) a->add_ints(v);
}

}  // namespace

void RegisterOnnxCompatLayers() {
  static std::once_flag once;
  std::call_once(once, [] {
    cv::dnn::LayerFactory::registerLayer("LayerNormalization", LayerNormLayer::create);
    cv::dnn::LayerFactory::registerLayer("Gelu", GeluLayer::create);
    cv::dnn::LayerFactory::registerLayer("Einsum", EinsumLayer::create);
    cv::dnn::LayerFactory::registerLayer("LoradBroadcastMul", BroadcastMulLayer::create);
  });
}

absl::StatusOr<OnnxRewrite> RewriteForOpenCv(const std::string& bytes, const std::string& name) {
  lorad_onnx::ModelProto model;
  if (bytes.empty() || !model.ParseFromString(bytes) || !model.has_graph() || model.graph().node_size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " is not an ONNX model (it does not parse as one, or its graph has no nodes); give the tagger's "
              "model.onnx (e.g. from SmilingWolf/wd-v1-4-convnext-tagger-v2 or wd-vit-tagger-v3)"));
  }
  // Constants: initializers and Constant nodes' outputs, with their dims.
  std::map<std::string, std::vector<int64_t>> constants;
  for (const auto& t : model.graph().initializer()) {
    constants[t.name()] = std::vector<int64_t>(t.dims().begin(), t.dims().end());
  }
  for (const auto& node : model.graph().node()) {
    if (node.op_type() != "Constant" || node.output_size() != 1) continue;
    for (const auto& a : node.attribute()) {
      if (a.name() == "value" && a.has_t()) {
        constants[node.output(0)] = std::vector<int64_t>(a.t().dims().begin(), a.t().dims().end());
      }
    }
  }
  auto elements = [](const std::vector<int64_t>& dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  };
  OnnxRewrite out;
  bool changed = false;
  for (auto& node : *model.mutable_graph()->mutable_node()) {
    if (!node.domain().empty() && node.domain() != "ai.onnx") continue;
    const std::string& op = node.op_type();
    bool ours = op == "LayerNormalization" || op == "Einsum" || op == "Gelu";
    if (op == "Mul" && node.input_size() == 2) {
      for (const auto& input : node.input()) {
        auto it = constants.find(input);
        if (it != constants.end() && elements(it->second) > 1) ours = true;
      }
      if (ours) {
        node.set_op_type("LoradBroadcastMul");
        ++out.broadcast_muls;
      }
    }
    if (!ours || HasAttribute(node, kInputKinds)) continue;
    std::vector<int64_t> kinds, dims, ranks;
    for (const auto& input : node.input()) {
      if (input.empty()) continue;  // an omitted optional input
      auto it = constants.find(input);
      kinds.push_back(it != constants.end() ? 1 : 0);
      if (it != constants.end()) {
        ranks.push_back(static_cast<int64_t>(it->second.size()));
        dims.insert(dims.end(), it->second.begin(), it->second.end());
      }
    }
    AddInts(&node, kInputKinds, kinds);
    if (!ranks.empty()) {
      AddInts(&node, kConstRanks, ranks);
      if (!dims.empty()) AddInts(&node, kConstDims, dims);
    }
    changed = true;
  }
  out.model = changed ? model.SerializeAsString() : bytes;
  return out;
}

}  // namespace lorad::data
