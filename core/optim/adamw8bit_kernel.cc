// AdamW8bit block-wise step: fused CPU kernel and torch-ops version (bitsandbytes
// csrc/kernels.cu:kOptimizerStatic8bit2StateBlockwise).
//
// Both do the same float32 operations in the same order, so they agree bit for
// bit. The torch-ops version fixes that order on CPU as LibTorch's AVX2/AVX-512
// kernels run it: add_(g, alpha) is fma(g, alpha, m), addcmul_(g, g, s) is
// fma(s*g, g, v), addcdiv is p + (s*m)/d; the fused kernel spells each out.
// Square roots are correctly rounded in both (see Adam8bitStepTorchOps).
#include "core/optim/adamw8bit_kernel.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include <ATen/Parallel.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LORAD_ADAM8_AVX2 1
#endif

namespace lorad::optim {
namespace {

constexpr int kBlock = static_cast<int>(kAdam8bitBlock);

// bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8),
// computed with the same float32 torch ops.
torch::Tensor CreateDynamicMap(bool is_signed) {
  const int max_exponent_bits = 7, non_sign_bits = 7;
  std::vector<torch::Tensor> parts;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int64_t fraction_items = is_signed ? (int64_t{1} << (i + non_sign_bits - max_exponent_bits)) + 1
                                             : (int64_t{1} << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    torch::Tensor boundaries = torch::linspace(0.1, 1, fraction_items, torch::kFloat);
    torch::Tensor means = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, -(max_exponent_bits - 1) + i);
    parts.push_back(scale * means);
    if (is_signed) parts.push_back(-scale * means);
  }
  parts.push_back(torch::tensor({0.0f, 1.0f}));
  torch::Tensor map = std::get<0>(torch::sort(torch::cat(parts)));
  TORCH_CHECK(map.numel() == 256, "dynamic map has ", map.numel(), " entries");
  return map;
}

// Midpoints between consecutive map entries: searchsorted over them gives the
// nearest entry (ties to the lower one) in one pass.
torch::Tensor Midpoints(const torch::Tensor& map) { return (map.slice(0, 1) + map.slice(0, 0, -1)) / 2; }

std::vector<float> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// torch.searchsorted(mid, x, right=False) on CPU: the number of midpoints m
// with !(m >= x) (255 for NaN).
int SearchSorted(const float* mid, float x) {
  int start = 0, end = 255;
  while (start < end) {
    const int half = start + ((end - start) >> 1);
    if (!(mid[half] >= x)) {
      start = half + 1;
    } else {
      end = half;
    }
  }
  return start;
}

// Order-preserving key of a float's bits: negative floats reversed below the positive ones.
inline uint32_t FloatKey(uint32_t bits) {
  return bits ^ (static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u);
}
float FromKey(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? key ^ 0x80000000u : ~key;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

std::vector<uint8_t> BuildLut(const float* mid) {
  constexpr uint32_t kBuckets = uint32_t{1} << (32 - DynamicMaps::kKeyShift);
  std::vector<uint8_t> lut(kBuckets + 4, 0);  // +4: the AVX2 path reads 4 bytes per entry
  for (uint32_t b = 0; b < kBuckets; ++b) {
    const uint32_t first = b << DynamicMaps::kKeyShift, last = first | ((uint32_t{1} << DynamicMaps::kKeyShift) - 1);
    float lo = FromKey(first), hi = FromKey(last);
    if (std::isnan(lo) && std::isnan(hi)) continue;  // NaN buckets: NaN is handled apart
    if (std::isnan(lo)) lo = hi;                     // the -inf bucket
    if (std::isnan(hi)) hi = lo;                     // the +inf bucket
    const int code_lo = SearchSorted(mid, lo), code_hi = SearchSorted(mid, hi);
    TORCH_CHECK(code_hi - code_lo <= 1, "AdamW8bit lookup bucket ", b, " holds more than one midpoint");
    lut[b] = static_cast<uint8_t>(code_lo);
  }
  return lut;
}

// The step's float32 scalars, each rounded as the torch-ops version rounds it.
struct Consts {
  float beta1, alpha1, beta2, alpha2, correction2, eps_term, step_size, decay;
};

Consts MakeConsts(const Adam8bitHyper& h, double lr, int64_t step) {
  const float b1 = static_cast<float>(h.beta1), b2 = static_cast<float>(h.beta2);
  const float t = static_cast<float>(step);
  const float correction1 = 1.0f - std::pow(b1, t);
  const float correction2 = std::sqrt(1.0f - std::pow(b2, t));
  const float lr_f = static_cast<float>(lr);
  Consts k;
  k.beta1 = b1;
  k.alpha1 = static_cast<float>(1.0 - h.beta1);
  k.beta2 = b2;
  k.alpha2 = static_cast<float>(1.0 - h.beta2);
  k.correction2 = correction2;
  k.eps_term = static_cast<float>(h.eps * static_cast<double>(correction2));
  k.step_size = -lr_f * correction2 / correction1;
  // x * 1.0f is exact, so "no decay" is a multiplication by one.
  k.decay = h.weight_decay > 0 ? 1.0f - lr_f * static_cast<float>(h.weight_decay) : 1.0f;
  return k;
}

struct Kernel {
  Consts k;
  const DynamicMaps* maps;
  const float* grad;
  float* param;
  uint8_t* code1;
  uint8_t* code2;
  float* absmax1;
  float* absmax2;
  int64_t n;
};

// Dequantise, update m and v, step and decay the parameter (not where g is
// NaN/Inf: there m = v = 0 and p stays). Writes m and v to the block buffers.
inline __attribute__((always_inline)) void ElementStep(const Consts& k, const float* q1, const float* q2, float am1,
                                                       float am2, float g, float* p, uint8_t c1, uint8_t c2, float* m,
                                                       float* v) {
  const bool finite = std::fabs(g) <= FLT_MAX;
  const float gz = finite ? g : 0.0f;
  const float mj = std::fma(gz, k.alpha1, (q1[c1] * am1) * k.beta1);
  const float vj = std::fma(k.alpha2 * gz, gz, (q2[c2] * am2) * k.beta2);
  *m = finite ? mj : 0.0f;
  *v = finite ? vj : 0.0f;
  const float stepped = (*p + (k.step_size * *m) / (std::sqrt(*v) + k.eps_term)) * k.decay;
  if (finite) *p = stepped;
}

// NaN-propagating max, as torch's amax.
inline float MaxNan(float acc, float x) { return (x > acc || std::isnan(x)) ? x : acc; }

inline __attribute__((always_inline)) int QuantizeOne(const DynamicMaps& maps, bool is_signed, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int code = maps.lut(is_signed)[FloatKey(bits) >> DynamicMaps::kKeyShift];
  code += !(maps.mid(is_signed)[code] >= x);
  if (std::isnan(x)) code = 255;
  if (is_signed) {
    // State1's code must keep m's sign: codes below zero_code1 are the negative entries.
    const bool wrong_sign = (code < maps.zero_code1()) != std::signbit(x);
    if (wrong_sign) code = std::clamp(code + (x > 0 ? 1 : -1), 0, 255);
  }
  return code;
}

// x = moment / absmax per element (0 for a block whose absmax is not > 0).
inline void Scale(float* x, int len, float absmax) {
  if (absmax > 0) {
    for (int j = 0; j < len; ++j) x[j] = x[j] / absmax;
  } else {
    for (int j = 0; j < len; ++j) x[j] = 0.0f;
  }
}

void BlocksGeneric(const Kernel& r, int64_t begin, int64_t end) {
  const float* q1 = r.maps->qmap(true);
  const float* q2 = r.maps->qmap(false);
  float m[kBlock], v[kBlock];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = b * kBlock;
    const int len = static_cast<int>(std::min<int64_t>(kBlock, r.n - start));
    const float am1 = r.absmax1[b], am2 = r.absmax2[b];
    float max1 = 0.0f, max2 = 0.0f;
    for (int j = 0; j < len; ++j) {
      ElementStep(r.k, q1, q2, am1, am2, r.grad[start + j], r.param + start + j, r.code1[start + j],
                  r.code2[start + j], m + j, v + j);
      max1 = MaxNan(max1, std::fabs(m[j]));
      max2 = MaxNan(max2, v[j]);
    }
    Scale(m, len, max1);
    Scale(v, len, max2);
    for (int j = 0; j < len; ++j) {
      r.code1[start + j] = static_cast<uint8_t>(QuantizeOne(*r.maps, true, m[j]));
      r.code2[start + j] = static_cast<uint8_t>(QuantizeOne(*r.maps, false, v[j]));
    }
    r.absmax1[b] = max1;
    r.absmax2[b] = max2;
  }
}

#ifdef LORAD_ADAM8_AVX2
#define LORAD_AVX2 __attribute__((target("avx2,fma")))

LORAD_AVX2 inline __m256 MaxNan8(__m256 acc, __m256 x) {
  const __m256 take = _mm256_or_ps(_mm256_cmp_ps(x, acc, _CMP_GT_OQ), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_ps(acc, x, take);
}

LORAD_AVX2 inline float HorizontalMaxNan(__m256 acc, float start) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (float x : lanes) start = MaxNan(start, x);
  return start;
}

// The tables one Quantize8 call reads, loaded once per block range.
struct QuantTables {
  const uint8_t* lut;
  const float* mid;
  int zero_code;  // signed map only, else -1
};

// QuantizeOne for 8 floats; codes as int32 lanes.
LORAD_AVX2 inline __m256i Quantize8(const QuantTables& t, __m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i sign = _mm256_srai_epi32(bits, 31);
  const __m256i key = _mm256_xor_si256(bits, _mm256_or_si256(sign, _mm256_set1_epi32(INT32_MIN)));
  const __m256i bucket = _mm256_srli_epi32(key, DynamicMaps::kKeyShift);
  const __m256i lut_word = _mm256_i32gather_epi32(reinterpret_cast<const int*>(t.lut), bucket, 1);
  __m256i code = _mm256_and_si256(lut_word, _mm256_set1_epi32(0xff));
  const __m256 mid = _mm256_i32gather_ps(t.mid, code, 4);
  code = _mm256_sub_epi32(code, _mm256_castps_si256(_mm256_cmp_ps(mid, x, _CMP_NGE_UQ)));  // +1 where !(mid >= x)
  code = _mm256_blendv_epi8(code, _mm256_set1_epi32(255), _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
  if (t.zero_code >= 0) {
    const __m256i negative_code = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.zero_code), code);
    const __m256i wrong_sign = _mm256_xor_si256(negative_code, sign);
    const __m256i positive = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
    const __m256i toward = _mm256_sub_epi32(_mm256_and_si256(positive, _mm256_set1_epi32(2)), _mm256_set1_epi32(1));
    code = _mm256_add_epi32(code, _mm256_and_si256(wrong_sign, toward));
    code = _mm256_min_epi32(_mm256_max_epi32(code, _mm256_setzero_si256()), _mm256_set1_epi32(255));
  }
  return code;
}

LORAD_AVX2 inline __m256 Gather8(const float* qmap, const uint8_t* codes) {
  const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes)));
  return _mm256_i32gather_ps(qmap, idx, 4);
}

// Codes are in [0, 255], so the saturating packs just narrow them.
LORAD_AVX2 inline void StoreCodes8(uint8_t* out, __m256i code) {
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(words, words));
}

LORAD_AVX2 void BlocksAvx2(const Kernel& r, int64_t begin, int64_t end) {
  const float* q1 = r.maps->qmap(true);
  const float* q2 = r.maps->qmap(false);
  const Consts& k = r.k;
  const __m256 beta1 = _mm256_set1_ps(k.beta1), alpha1 = _mm256_set1_ps(k.alpha1);
  const __m256 beta2 = _mm256_set1_ps(k.beta2), alpha2 = _mm256_set1_ps(k.alpha2);
  const __m256 eps_term = _mm256_set1_ps(k.eps_term), step_size = _mm256_set1_ps(k.step_size);
  const __m256 decay = _mm256_set1_ps(k.decay), flt_max = _mm256_set1_ps(FLT_MAX);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const QuantTables t1{r.maps->lut(true), r.maps->mid(true), static_cast<int>(r.maps->zero_code1())};
  const QuantTables t2{r.maps->lut(false), r.maps->mid(false), -1};
  alignas(32) float m[kBlock], v[kBlock];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = b * kBlock;
    const int len = static_cast<int>(std::min<int64_t>(kBlock, r.n - start));
    const int vec_len = len & ~7;
    const float am1 = r.absmax1[b], am2 = r.absmax2[b];
    const __m256 am1v = _mm256_set1_ps(am1), am2v = _mm256_set1_ps(am2);
    const float* g = r.grad + start;
    float* p = r.param + start;
    uint8_t* c1 = r.code1 + start;
    uint8_t* c2 = r.code2 + start;
    __m256 max1v = zero, max2v = zero;
    for (int j = 0; j < vec_len; j += 8) {
      const __m256 gj = _mm256_loadu_ps(g + j);
      const __m256 finite = _mm256_cmp_ps(_mm256_and_ps(gj, abs_mask), flt_max, _CMP_LE_OQ);
      const __m256 gz = _mm256_and_ps(gj, finite);
      const __m256 m_old = _mm256_mul_ps(_mm256_mul_ps(Gather8(q1, c1 + j), am1v), beta1);
      const __m256 v_old = _mm256_mul_ps(_mm256_mul_ps(Gather8(q2, c2 + j), am2v), beta2);
      const __m256 mj = _mm256_and_ps(_mm256_fmadd_ps(gz, alpha1, m_old), finite);
      const __m256 vj = _mm256_and_ps(_mm256_fmadd_ps(_mm256_mul_ps(alpha2, gz), gz, v_old), finite);
      _mm256_store_ps(m + j, mj);
      _mm256_store_ps(v + j, vj);
      const __m256 pj = _mm256_loadu_ps(p + j);
      const __m256 denom = _mm256_add_ps(_mm256_sqrt_ps(vj), eps_term);
      const __m256 stepped = _mm256_mul_ps(_mm256_add_ps(pj, _mm256_div_ps(_mm256_mul_ps(step_size, mj), denom)), decay);
      _mm256_storeu_ps(p + j, _mm256_blendv_ps(pj, stepped, finite));
      max1v = MaxNan8(max1v, _mm256_and_ps(mj, abs_mask));
      max2v = MaxNan8(max2v, vj);
    }
    float max1 = HorizontalMaxNan(max1v, 0.0f), max2 = HorizontalMaxNan(max2v, 0.0f);
    for (int j = vec_len; j < len; ++j) {
      ElementStep(k, q1, q2, am1, am2, g[j], p + j, c1[j], c2[j], m + j, v + j);
      max1 = MaxNan(max1, std::fabs(m[j]));
      max2 = MaxNan(max2, v[j]);
    }
    const bool scale1 = max1 > 0, scale2 = max2 > 0;
    const __m256 max1b = _mm256_set1_ps(max1), max2b = _mm256_set1_ps(max2);
    for (int j = 0; j < vec_len; j += 8) {
      const __m256 x1 = scale1 ? _mm256_div_ps(_mm256_load_ps(m + j), max1b) : zero;
      const __m256 x2 = scale2 ? _mm256_div_ps(_mm256_load_ps(v + j), max2b) : zero;
      StoreCodes8(c1 + j, Quantize8(t1, x1));
      StoreCodes8(c2 + j, Quantize8(t2, x2));
    }
    for (int j = vec_len; j < len; ++j) {
      c1[j] = static_cast<uint8_t>(QuantizeOne(*r.maps, true, scale1 ? m[j] / max1 : 0.0f));
      c2[j] = static_cast<uint8_t>(QuantizeOne(*r.maps, false, scale2 ? v[j] / max2 : 0.0f));
    }
    r.absmax1[b] = max1;
    r.absmax2[b] = max2;
  }
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

}  // namespace

DynamicMaps::DynamicMaps() {
  cpu_.qmap1 = CreateDynamicMap(true);
  cpu_.qmap2 = CreateDynamicMap(false);
  cpu_.mid1 = Midpoints(cpu_.qmap1);
  cpu_.mid2 = Midpoints(cpu_.qmap2);
  zero_code1_ = cpu_.qmap1.lt(0).sum().item<int64_t>();
  qmap1_f_ = ToVector(cpu_.qmap1);
  qmap2_f_ = ToVector(cpu_.qmap2);
  mid1_f_ = ToVector(cpu_.mid1);
  mid2_f_ = ToVector(cpu_.mid2);
  mid1_f_.push_back(INFINITY);
  mid2_f_.push_back(INFINITY);
  lut1_ = BuildLut(mid1_f_.data());
  lut2_ = BuildLut(mid2_f_.data());
}

const DynamicMaps::OnDevice& DynamicMaps::On(const torch::Device& device) {
  if (device.is_cpu()) return cpu_;
  if (!device_.qmap1.defined() || device_.qmap1.device() != device) {
    device_.qmap1 = cpu_.qmap1.to(device);
    device_.qmap2 = cpu_.qmap2.to(device);
    device_.mid1 = Midpoints(device_.qmap1);
    device_.mid2 = Midpoints(device_.qmap2);
  }
  return device_;
}

int DynamicMaps::NearestCode(bool is_signed, float x) const {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int code = lut(is_signed)[FloatKey(bits) >> kKeyShift];
  code += !(mid(is_signed)[code] >= x);
  return std::isnan(x) ? 255 : code;
}

void Adam8bitStepFusedCpu(DynamicMaps& maps, const Adam8bitHyper& h, double lr, int64_t step, const torch::Tensor& param,
                          const torch::Tensor& grad, const Adam8bitState& state, bool portable_only) {
  TORCH_CHECK(param.is_cpu() && grad.is_cpu(), "the fused AdamW8bit kernel runs on CPU tensors");
  const int64_t n = param.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  TORCH_CHECK(state.state1.numel() == n && state.state2.numel() == n && state.absmax1.numel() == blocks &&
                  state.absmax2.numel() == blocks,
              "AdamW8bit state does not match a parameter of ", n, " elements");
  TORCH_CHECK(state.state1.is_contiguous() && state.state2.is_contiguous() && state.absmax1.is_contiguous() &&
                  state.absmax2.is_contiguous(),
              "AdamW8bit state tensors must be contiguous");
  // float32 working copies where needed (the math is float32 for every dtype, as in the torch-ops version).
  const bool in_place = param.scalar_type() == torch::kFloat && param.is_contiguous();
  torch::Tensor p = in_place ? param : param.to(torch::kFloat).contiguous();
  torch::Tensor g = grad.to(torch::kFloat).contiguous();
  Kernel r{MakeConsts(h, lr, step),
           &maps,
           g.data_ptr<float>(),
           p.data_ptr<float>(),
           state.state1.data_ptr<uint8_t>(),
           state.state2.data_ptr<uint8_t>(),
           state.absmax1.data_ptr<float>(),
           state.absmax2.data_ptr<float>(),
           n};
  // 64 blocks (16 K elements) per task: enough work to amortise a thread hand-off.
  at::parallel_for(0, blocks, 64, [&](int64_t begin, int64_t end) {
#ifdef LORAD_ADAM8_AVX2
    if (!portable_only && HasAvx2()) {
      BlocksAvx2(r, begin, end);
      return;
    }
#endif
    BlocksGeneric(r, begin, end);
  });
  if (!in_place) param.copy_(p.view_as(param));
}

void Adam8bitStepTorchOps(DynamicMaps& maps, const Adam8bitHyper& h, double lr, int64_t step, const torch::Tensor& param,
                          const torch::Tensor& grad, const Adam8bitState& state) {
  const DynamicMaps::OnDevice& q = maps.On(param.device());
  const int64_t n = param.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const auto f32 = param.options().dtype(torch::kFloat);
  const int64_t pad = blocks * kBlock - n;
  auto blocked = [&](const torch::Tensor& flat) {
    return (pad == 0 ? flat : torch::constant_pad_nd(flat, {0, pad}, 0)).view({blocks, kBlock});
  };
  torch::Tensor g = blocked(grad.flatten().to(torch::kFloat));
  // Non-finite gradients leave their parameter alone and reset its state to 0, as in the kernel.
  const bool all_finite = torch::isfinite(g).all().item<bool>();
  torch::Tensor finite = all_finite ? torch::Tensor() : torch::isfinite(g);
  if (!all_finite) g = torch::where(finite, g, torch::zeros({}, f32));
  // 1. dequantise, 2. moment updates.
  torch::Tensor m = blocked(q.qmap1.index_select(0, state.state1.to(torch::kInt))).mul_(state.absmax1.unsqueeze(1));
  torch::Tensor v = blocked(q.qmap2.index_select(0, state.state2.to(torch::kInt))).mul_(state.absmax2.unsqueeze(1));
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
  if (!all_finite) {
    m.masked_fill_(finite.logical_not(), 0);
    v.masked_fill_(finite.logical_not(), 0);
  }
  // 3. new per-block absmax (v >= 0).
  torch::Tensor new_absmax1 = m.abs().amax(1);
  torch::Tensor new_absmax2 = v.amax(1);
  // 4. parameter update, then decay.
  const Consts k = MakeConsts(h, lr, step);
  torch::Tensor p = blocked(param.flatten().to(torch::kFloat));
  // Spelled out as the fused kernel computes it, p + (step_size * m) / denom:
  // addcdiv's internal order differs between LibTorch versions (1.13 scales m
  // first, 2.x the quotient), which would break bit-identity with the kernel.
  // The square root through float64: pip torch's CPU sqrt is MKL VML's vsSqrt
  // in its HA mode (up to 1 ulp off; Debian's MKL-less 1.13 and CUDA round
  // correctly). A float's exact root lies at least 2^-51 (relative) from a
  // float rounding midpoint, while the float64 root is within 2^-52 of it, so
  // rounding that to float gives the correctly rounded root, std::sqrt's
  // result in the fused kernel, on every device and LibTorch build.
  torch::Tensor denom =
      v.to(torch::kDouble).sqrt_().to(torch::kFloat).add_(h.eps * static_cast<double>(k.correction2));
  torch::Tensor stepped = m.mul(k.step_size).div_(denom).add_(p);
  if (h.weight_decay > 0) stepped.mul_(k.decay);
  if (!all_finite) stepped = torch::where(finite, stepped, p);
  param.copy_(stepped.view({-1}).slice(0, 0, n).view_as(param));
  // 5. re-quantise: nearest code of moment / absmax (0 for a block whose absmax is not > 0).
  torch::Tensor x1 = m.div_(new_absmax1.unsqueeze(1));
  torch::Tensor x2 = v.div_(new_absmax2.unsqueeze(1));
  if (!new_absmax1.gt(0).all().item<bool>()) x1.masked_fill_(new_absmax1.gt(0).logical_not().unsqueeze(1), 0.0);
  if (!new_absmax2.gt(0).all().item<bool>()) x2.masked_fill_(new_absmax2.gt(0).logical_not().unsqueeze(1), 0.0);
  torch::Tensor code1 = torch::searchsorted(q.mid1, x1, /*out_int32=*/true);
  // State1's code must keep m's sign: codes below zero_code1 are the negative entries.
  torch::Tensor wrong_sign = code1.lt(maps.zero_code1()).ne(torch::signbit(x1));
  code1.add_(wrong_sign.to(torch::kInt) * (x1.gt(0).to(torch::kInt) * 2 - 1)).clamp_(0, 255);
  torch::Tensor code2 = torch::searchsorted(q.mid2, x2, /*out_int32=*/true);
  state.state1.copy_(code1.view({-1}).slice(0, 0, n));
  state.state2.copy_(code2.view({-1}).slice(0, 0, n));
  state.absmax1.copy_(new_absmax1);
  state.absmax2.copy_(new_absmax2);
}

}  // namespace lorad::optim
