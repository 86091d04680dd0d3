// CUDA kernels of span_bias, steered_softmax and scale_keys_ (semantics: csrc/cpu/eager_ops.cpp).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../common/check.h"
#include "../common/row_math.h"
#include "warp.cuh"

namespace attnsteer::cuda {
namespace {

__global__ void span_bias_kernel(const float* span, const float* bias, const bool* qmask, float* out, int64_t B,
                                 int64_t H, int64_t T, int64_t Tk) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H * T * Tk) return;
  const int64_t j = idx % Tk, i = (idx / Tk) % T, bh = idx / (Tk * T), b = bh / H;
  const bool on = qmask == nullptr || qmask[b * T + i];
  out[idx] = on ? bias[bh] * span[b * Tk + j] : 0.f;
}

struct SoftmaxArgs {
  float* x;  // (B,H,Tq,Tk) fp32, in place
  const float* span;
  const float* bias;
  const float* key_scale;
  const bool* qmask;
  MaskView mask;
  int64_t B, H, Tq, Tk, window;
  bool causal, exact;
  float softcap, target;
};

__global__ void steered_softmax_kernel(SoftmaxArgs a) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= a.B * a.H * a.Tq) return;
  const int64_t i = row % a.Tq, bh = row / a.Tq, h = bh % a.H, b = bh / a.H;
  float* s = a.x + row * a.Tk;
  const float* sp = a.span + b * a.Tk;
  const bool steered = a.qmask == nullptr || a.qmask[b * a.Tq + i];
  const float ks = steered ? a.key_scale[bh] : 1.f, bias = steered ? a.bias[bh] : 0.f;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const RowRange range = visible_range(i, a.Tq, a.Tk, a.causal, a.window);
  float m_span = neg_inf, m_rest = neg_inf;
  for (int64_t j = lane; j < a.Tk; j += kWarp) {
    const bool in_span = sp[j] != 0.f;
    float v = steer_logit(s[j], sp[j], ks, a.softcap, bias);
    if (a.mask.defined()) v = a.mask.apply(v, b, h, i, j);
    if (j < range.lo || j > range.hi) v = neg_inf;
    s[j] = v;
    if (in_span && a.target > 0.f)
      m_span = fmaxf(m_span, v);
    else
      m_rest = fmaxf(m_rest, v);
  }
  m_span = warp_max(m_span);
  m_rest = warp_max(m_rest);
  const float M = fmaxf(m_span, m_rest);
  if (M == neg_inf) {
    for (int64_t j = lane; j < a.Tk; j += kWarp) s[j] = 0.f;
    return;
  }
  float z_span = 0.f, z_rest = 0.f;
  for (int64_t j = lane; j < a.Tk; j += kWarp) {
    const bool in_span = a.target > 0.f && sp[j] != 0.f;
    const float mref = in_span ? m_span : m_rest;
    const float e = (s[j] == neg_inf || mref == neg_inf) ? 0.f : __expf(s[j] - mref);
    s[j] = e;
    if (in_span)
      z_span += e;
    else
      z_rest += e;
  }
  z_span = warp_sum(z_span);
  z_rest = warp_sum(z_rest);
  float fs = 0.f, fr = z_rest > 0.f ? 1.f / z_rest : 0.f;
  if (a.target > 0.f) {
    const ChannelMix mix = mix_channels(m_span, z_span, m_rest, z_rest, steered, a.target, a.exact);
    fs = mix.f_span;
    fr = mix.f_rest;
  }
  for (int64_t j = lane; j < a.Tk; j += kWarp) s[j] *= (a.target > 0.f && sp[j] != 0.f) ? fs : fr;
}

template <typename scalar_t>
__global__ void scale_keys_kernel(scalar_t* keys, const float* span, const double* factor, int64_t B, int64_t H,
                                  int64_t T, int64_t D, int64_t sb, int64_t sh, int64_t st, int64_t sd) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H * T * D) return;
  const int64_t d = idx % D, j = (idx / D) % T, h = (idx / (D * T)) % H, b = idx / (D * T * H);
  if (span[b * T + j] == 0.f) return;
  scalar_t* p = keys + b * sb + h * sh + j * st + d * sd;
  *p = static_cast<scalar_t>(static_cast<double>(static_cast<float>(*p)) * factor[b * H + h]);
}

// One warp per row (b, h, t) of a span token: tmp = b[h]^T x (warp sums, kept in shared memory),
// then x += w * a[h] tmp, each lane its strided share of D.
template <typename scalar_t>
__global__ void lowrank_edit_kernel(scalar_t* x, const float* span, const float* a, const float* b, int64_t B,
                                    int64_t H, int64_t T, int64_t D, int64_t R, int64_t sb, int64_t sh, int64_t st,
                                    int64_t sd) {
  extern __shared__ float tmp_all[];
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp;
  if (row >= B * H * T) return;
  const int64_t t = row % T, h = (row / T) % H, bb = row / (T * H);
  const float w = span[bb * T + t];
  if (w == 0.f) return;
  float* tmp = tmp_all + warp * R;
  scalar_t* xr = x + bb * sb + h * sh + t * st;
  const float* ah = a + h * D * R;
  const float* bh = b + h * D * R;
  for (int64_t r = 0; r < R; ++r) {
    float part = 0.f;
    for (int64_t d = lane; d < D; d += kWarp) part += bh[d * R + r] * static_cast<float>(xr[d * sd]);
    part = warp_sum(part);
    if (lane == 0) tmp[r] = part;
  }
  __syncwarp();
  for (int64_t d = lane; d < D; d += kWarp) {
    float acc = 0.f;
    for (int64_t r = 0; r < R; ++r) acc += ah[d * R + r] * tmp[r];
    xr[d * sd] = static_cast<scalar_t>(static_cast<float>(xr[d * sd]) + w * acc);
  }
}

}  // namespace

at::Tensor span_bias_cuda(const at::Tensor& span_weights, const at::Tensor& bias,
                          const c10::optional<at::Tensor>& query_mask, int64_t num_queries, at::ScalarType dtype) {
  TORCH_CHECK(span_weights.dim() == 2 && bias.dim() == 2 && bias.size(0) == span_weights.size(0),
              "span_bias: span_weights must be (B, Tk) and bias (B, H); got ", span_weights.sizes(), " and ",
              bias.sizes());
  ATTNSTEER_CHECK_DEVICE("span_bias", "bias", bias, span_weights.device());
  if (query_mask.has_value() && query_mask->defined()) {
    ATTNSTEER_CHECK_SHAPE("span_bias", "query_mask", *query_mask, "(B, Tq)", span_weights.size(0), num_queries);
    ATTNSTEER_CHECK_DEVICE("span_bias", "query_mask", *query_mask, span_weights.device());
  }
  c10::cuda::CUDAGuard guard(span_weights.device());
  const int64_t B = span_weights.size(0), Tk = span_weights.size(1), H = bias.size(1);
  const bool per_row = query_mask.has_value() && query_mask->defined();
  const int64_t T = per_row ? num_queries : 1;
  const at::Tensor span = span_weights.to(at::kFloat).contiguous();
  const at::Tensor bias_f = bias.to(at::kFloat).contiguous();
  const at::Tensor qm = per_row ? query_mask->to(at::kBool).contiguous() : at::Tensor();
  at::Tensor out = at::empty({B, H, T, Tk}, span.options());
  const int64_t n = out.numel();
  if (n > 0) {
    span_bias_kernel<<<(n + 255) / 256, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        span.data_ptr<float>(), bias_f.data_ptr<float>(), per_row ? qm.data_ptr<bool>() : nullptr,
        out.data_ptr<float>(), B, H, T, Tk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return dtype == at::kFloat ? out : out.to(dtype);
}

at::Tensor steered_softmax_cuda(const at::Tensor& logits, const at::Tensor& span_weights, const at::Tensor& bias,
                                const at::Tensor& key_scale, c10::optional<double> target, bool target_exact,
                                const c10::optional<at::Tensor>& query_mask, const c10::optional<at::Tensor>& attn_mask,
                                bool is_causal, c10::optional<int64_t> window, c10::optional<double> softcap) {
  TORCH_CHECK(logits.dim() == 4, "steered_softmax: logits must be (B, H, Tq, Tk); got ", logits.sizes());
  c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), H = logits.size(1), Tq = logits.size(2), Tk = logits.size(3);
  const Steering st = pack_steering("steered_softmax", B, H, Tq, Tk, logits.device(), span_weights, bias, key_scale,
                                    query_mask, attn_mask);
  at::Tensor x = logits.to(at::kFloat).contiguous();
  if (x.data_ptr() == logits.data_ptr()) x = x.clone();
  SoftmaxArgs a{};
  a.mask = make_mask_view(st.attn_mask, B, H, Tq, Tk);
  a.x = x.data_ptr<float>();
  a.span = st.span.data_ptr<float>();
  a.bias = st.bias.data_ptr<float>();
  a.key_scale = st.key_scale.data_ptr<float>();
  a.qmask = st.query_mask.defined() ? st.query_mask.data_ptr<bool>() : nullptr;
  a.B = B;
  a.H = H;
  a.Tq = Tq;
  a.Tk = Tk;
  a.window = window.has_value() ? *window : 0;
  a.causal = is_causal;
  a.exact = target_exact;
  a.softcap = softcap.has_value() ? static_cast<float>(*softcap) : 0.f;
  a.target = target.has_value() ? static_cast<float>(*target) : 0.f;
  const int64_t rows = B * H * Tq;
  if (rows > 0 && Tk > 0) {
    steered_softmax_kernel<<<(rows + 3) / 4, 128, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return x.to(logits.scalar_type());
}

void scale_keys_cuda(at::Tensor& keys, const at::Tensor& span_weights, const at::Tensor& factor) {
  TORCH_CHECK(keys.dim() == 4, "scale_keys_: keys must be (B, Hkv, T, D); got ", keys.sizes());
  c10::cuda::CUDAGuard guard(keys.device());
  const int64_t B = keys.size(0), H = keys.size(1), T = keys.size(2), D = keys.size(3);
  ATTNSTEER_CHECK_SHAPE("scale_keys_", "span_weights", span_weights, "(B, T)", B, T);
  ATTNSTEER_CHECK_SHAPE("scale_keys_", "factor", factor, "(B, Hkv)", B, H);
  ATTNSTEER_CHECK_DEVICE("scale_keys_", "span_weights", span_weights, keys.device());
  ATTNSTEER_CHECK_DEVICE("scale_keys_", "factor", factor, keys.device());
  const at::Tensor span = span_weights.to(at::kFloat).contiguous();
  const at::Tensor fac = factor.to(at::kDouble).contiguous();  // in double, as on CPU and in the reference
  const int64_t n = keys.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "scale_keys_cuda", [&] {
    scale_keys_kernel<scalar_t><<<(n + 255) / 256, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        keys.data_ptr<scalar_t>(), span.data_ptr<float>(), fac.data_ptr<double>(), B, H, T, D, keys.stride(0),
        keys.stride(1), keys.stride(2), keys.stride(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void lowrank_edit_cuda(at::Tensor& x, const at::Tensor& span_weights, const at::Tensor& a, const at::Tensor& b) {
  const LowRank p = pack_lowrank(x, span_weights, a, b);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), R = a.size(2);
  if (x.numel() == 0 || R == 0) return;
  constexpr int kWarps = 4;
  const int64_t rows = B * H * T;
  const size_t shmem = sizeof(float) * kWarps * R;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lowrank_edit_cuda", [&] {
    lowrank_edit_kernel<scalar_t>
        <<<(rows + kWarps - 1) / kWarps, kWarps * kWarp, shmem, c10::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), p.span.data_ptr<float>(), p.a.data_ptr<float>(), p.b.data_ptr<float>(), B, H, T, D,
            R, x.stride(0), x.stride(1), x.stride(2), x.stride(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

TORCH_LIBRARY_IMPL(attnsteer, CUDA, m) {
  m.impl("span_bias", &span_bias_cuda);
  m.impl("steered_softmax", &steered_softmax_cuda);
  m.impl("scale_keys_", &scale_keys_cuda);
  m.impl("lowrank_edit_", &lowrank_edit_cuda);
}

}  // namespace attnsteer::cuda
