// CUDA kernels of the attnsteer ops. Same schemas and semantics as the CPU kernels
// (csrc/cpu/*.cpp); registered with TORCH_LIBRARY_IMPL(attnsteer, CUDA).
//
// steered_attention: one warp per query row, online softmax over key chunks of 32 (one key
// per lane for the logits, then every lane accumulates its slice of the head dimension), with
// span / rest channels when a target is set. O(T) memory, fp32 accumulation, K/V heads shared
// by their query group (never repeated). This is the straightforward warp-per-row design; a
// tiled tensor-core kernel is future work.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>

#include "../cpu/attention_common.h"
#include "warp.cuh"

namespace attnsteer::cuda {
namespace {

constexpr int kMaxDimPerLane = 8;  // head_dim <= 256
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(at::Half x) { return __half2float(static_cast<__half>(x)); }
__device__ __forceinline__ float to_float(at::BFloat16 x) { return static_cast<float>(x); }

struct MaskArgs {
  const void* data;
  bool is_bool;
  int64_t sb, sh, sq, sk;
};

template <typename scalar_t>
struct AttnArgs {
  const scalar_t *q, *k, *v;
  int64_t q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st;
  float* out;        // (B,Hq,Tq,D) fp32
  float* span_mass;  // (B,Hq,Tq) or nullptr
  const float* span;
  const float* bias;
  const float* key_scale;
  const bool* query_mask;
  MaskArgs mask;
  int64_t B, Hq, Hkv, Tq, Tk, D;
  bool causal;
  int64_t window;
  float softcap, scale, target;
  bool target_exact;
};

struct ChannelState {
  float m, l, ls;
  float acc[kMaxDimPerLane];
};

template <typename scalar_t>
__global__ void steered_attention_kernel(AttnArgs<scalar_t> a) {
  extern __shared__ float smem[];  // kWarpsPerBlock * D floats: the query rows
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= a.B * a.Hq * a.Tq) return;
  const int64_t i = row % a.Tq, bh = row / a.Tq, hq = bh % a.Hq, b = bh / a.Hq;
  const int64_t hkv = hq / (a.Hq / a.Hkv);
  const int64_t D = a.D;
  float* qs = smem + warp * D;
  const scalar_t* qrow = a.q + b * a.q_sb + hq * a.q_sh + i * a.q_st;
  for (int64_t d = lane; d < D; d += kWarp) qs[d] = to_float(qrow[d]) * a.scale;
  __syncwarp();

  const bool steered = a.query_mask == nullptr || a.query_mask[b * a.Tq + i];
  const float ks = steered ? a.key_scale[b * a.Hq + hq] : 1.f;
  const float bias = steered ? a.bias[b * a.Hq + hq] : 0.f;
  const bool two = a.target > 0.f;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t pos = i + a.Tk - a.Tq;
  int64_t lo = 0, hi = a.Tk - 1;
  if (a.causal && pos < hi) hi = pos;
  if (a.window > 0 && pos - a.window + 1 > 0) lo = pos - a.window + 1;

  ChannelState ch[2];
  for (int c = 0; c < 2; ++c) {
    ch[c].m = neg_inf;
    ch[c].l = 0.f;
    ch[c].ls = 0.f;
    for (int t = 0; t < kMaxDimPerLane; ++t) ch[c].acc[t] = 0.f;
  }
  const scalar_t* kbase = a.k + b * a.k_sb + hkv * a.k_sh;
  const scalar_t* vbase = a.v + b * a.v_sb + hkv * a.v_sh;
  const float* span_b = a.span + b * a.Tk;

  for (int64_t j0 = lo; j0 <= hi; j0 += kWarp) {
    const int64_t j = j0 + lane;
    float s = neg_inf;
    bool in_span = false;
    if (j <= hi) {
      const scalar_t* krow = kbase + j * a.k_st;
      float dot = 0.f;
      for (int64_t d = 0; d < D; ++d) dot += qs[d] * to_float(krow[d]);
      s = dot;
      const float w = span_b[j];
      in_span = w != 0.f;
      if (in_span) s *= ks;
      if (a.softcap > 0.f) s = a.softcap * tanhf(s / a.softcap);
      s += bias * w;
      if (a.mask.data != nullptr) {
        const int64_t off = b * a.mask.sb + hq * a.mask.sh + i * a.mask.sq + j * a.mask.sk;
        if (a.mask.is_bool) {
          if (!static_cast<const bool*>(a.mask.data)[off]) s = neg_inf;
        } else {
          s += static_cast<const float*>(a.mask.data)[off];
        }
      }
    }
    const int nch = two ? 2 : 1;
    for (int c = 0; c < nch; ++c) {
      const bool member = !two || (c == 0 ? in_span : !in_span);
      const float sc = member ? s : neg_inf;
      const float new_m = fmaxf(ch[c].m, warp_max(sc));
      if (new_m == neg_inf) continue;
      const float p = sc == neg_inf ? 0.f : __expf(sc - new_m);
      const float alpha = ch[c].m == neg_inf ? 0.f : __expf(ch[c].m - new_m);
      ch[c].l = ch[c].l * alpha + warp_sum(p);
      if (!two) ch[c].ls = ch[c].ls * alpha + warp_sum(in_span ? p : 0.f);
      ch[c].m = new_m;
      for (int t = 0; t < kMaxDimPerLane; ++t) ch[c].acc[t] *= alpha;
      const int64_t n = hi - j0 + 1 < kWarp ? hi - j0 + 1 : static_cast<int64_t>(kWarp);
      for (int jj = 0; jj < n; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == 0.f) continue;
        const scalar_t* vrow = vbase + (j0 + jj) * a.v_st;
        for (int t = 0; t < kMaxDimPerLane; ++t) {
          const int64_t d = lane + t * kWarp;
          if (d < D) ch[c].acc[t] += pj * to_float(vrow[d]);
        }
      }
    }
  }

  float* o = a.out + row * D;
  float mass = 0.f;
  float w0 = 0.f, w1 = 0.f;
  if (!two) {
    if (ch[0].l > 0.f) {
      w0 = 1.f / ch[0].l;
      mass = ch[0].ls / ch[0].l;
    }
  } else {
    const float M = fmaxf(ch[0].m, ch[1].m);
    if (M != neg_inf) {
      const float a0 = ch[0].l > 0.f ? ch[0].l * __expf(ch[0].m - M) : 0.f;
      const float a1 = ch[1].l > 0.f ? ch[1].l * __expf(ch[1].m - M) : 0.f;
      const float p = a0 / (a0 + a1), rest = a1 / (a0 + a1);
      float w = p;
      if (steered && ch[0].l > 0.f && p < a.target) w = a.target_exact ? a.target : a.target / (a.target + rest);
      w0 = ch[0].l > 0.f ? w / ch[0].l : 0.f;
      w1 = ch[1].l > 0.f ? (1.f - w) / ch[1].l : 0.f;
      mass = w;
    }
  }
  for (int t = 0; t < kMaxDimPerLane; ++t) {
    const int64_t d = lane + t * kWarp;
    if (d < D) o[d] = w0 * ch[0].acc[t] + (two ? w1 * ch[1].acc[t] : 0.f);
  }
  if (a.span_mass != nullptr && lane == 0) a.span_mass[row] = mass;
}

MaskArgs mask_args(const c10::optional<at::Tensor>& mask, int64_t B, int64_t H, int64_t Tq, int64_t Tk) {
  const cpu::MaskView v = cpu::make_mask_view(mask, B, H, Tq, Tk);
  return MaskArgs{v.data, v.is_bool, v.sb, v.sh, v.sq, v.sk};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> steered_attention_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& span_weights,
    const at::Tensor& bias, const at::Tensor& key_scale, c10::optional<double> target,
    bool target_exact, const c10::optional<at::Tensor>& query_mask,
    const c10::optional<at::Tensor>& attn_mask, bool is_causal, c10::optional<int64_t> window,
    c10::optional<double> softcap, double scale, bool return_span_mass) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "steered_attention: q, k, v must be 4-D (B, H, T, D); got q ", q.sizes(), ", k ", k.sizes(),
              ", v ", v.sizes());
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2);
  TORCH_CHECK(D <= kWarp * kMaxDimPerLane, "steered_attention (CUDA): head_dim ", D, " > ",
              kWarp * kMaxDimPerLane, " is not supported");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "steered_attention: query heads (", Hq,
              ") must be a multiple of key/value heads (", Hkv, ")");
  TORCH_CHECK(span_weights.sizes() == at::IntArrayRef({B, Tk}), "steered_attention: span_weights must be (B, Tk) = (",
              B, ", ", Tk, "); got ", span_weights.sizes());
  c10::cuda::CUDAGuard guard(q.device());
  auto lastdim = [](const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); };
  const at::Tensor qc = lastdim(q), kc = lastdim(k), vc = lastdim(v);
  const at::Tensor span = span_weights.to(at::kFloat).contiguous();
  const at::Tensor bias_f = bias.to(at::kFloat).contiguous();
  const at::Tensor ks_f = key_scale.to(at::kFloat).contiguous();
  at::Tensor qmask;
  if (query_mask.has_value() && query_mask->defined()) qmask = query_mask->to(at::kBool).contiguous();
  const c10::optional<at::Tensor> mask = cpu::kernel_mask(attn_mask);
  at::Tensor out = at::empty({B, Hq, Tq, D}, q.options().dtype(at::kFloat));
  at::Tensor mass = at::empty({return_span_mass ? B : 0, Hq, Tq}, q.options().dtype(at::kFloat));
  if (!return_span_mass) mass = at::empty({0}, q.options().dtype(at::kFloat));
  const int64_t rows = B * Hq * Tq;
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "steered_attention_cuda", [&] {
      AttnArgs<scalar_t> a;
      a.q = qc.data_ptr<scalar_t>();
      a.k = kc.data_ptr<scalar_t>();
      a.v = vc.data_ptr<scalar_t>();
      a.q_sb = qc.stride(0); a.q_sh = qc.stride(1); a.q_st = qc.stride(2);
      a.k_sb = kc.stride(0); a.k_sh = kc.stride(1); a.k_st = kc.stride(2);
      a.v_sb = vc.stride(0); a.v_sh = vc.stride(1); a.v_st = vc.stride(2);
      a.out = out.data_ptr<float>();
      a.span_mass = return_span_mass ? mass.data_ptr<float>() : nullptr;
      a.span = span.data_ptr<float>();
      a.bias = bias_f.data_ptr<float>();
      a.key_scale = ks_f.data_ptr<float>();
      a.query_mask = qmask.defined() ? qmask.data_ptr<bool>() : nullptr;
      a.mask = mask_args(mask, B, Hq, Tq, Tk);
      a.B = B; a.Hq = Hq; a.Hkv = Hkv; a.Tq = Tq; a.Tk = Tk; a.D = D;
      a.causal = is_causal;
      a.window = window.has_value() ? *window : 0;
      a.softcap = softcap.has_value() ? static_cast<float>(*softcap) : 0.f;
      a.scale = static_cast<float>(scale);
      a.target = target.has_value() ? static_cast<float>(*target) : 0.f;
      a.target_exact = target_exact;
      const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
      const size_t shmem = kWarpsPerBlock * D * sizeof(float);
      steered_attention_kernel<scalar_t><<<blocks, kWarpsPerBlock * kWarp, shmem,
                                           c10::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (q.scalar_type() != at::kFloat) out = out.to(q.scalar_type());
  return {out, mass};
}

TORCH_LIBRARY_IMPL(attnsteer, CUDA, m) { m.impl("steered_attention", &steered_attention_cuda); }

}  // namespace attnsteer::cuda
