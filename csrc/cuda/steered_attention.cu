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
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>

#include "../common/check.h"
#include "../common/row_math.h"
#include "warp.cuh"

namespace attnsteer::cuda {
namespace {

constexpr int kMaxDimPerLane = 8;  // head_dim <= 256
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(at::Half x) { return __half2float(static_cast<__half>(x)); }
__device__ __forceinline__ float to_float(at::BFloat16 x) { return static_cast<float>(x); }

struct ChannelState {
  float m, l, ls;
  float acc[kMaxDimPerLane];
};

template <typename scalar_t>
__global__ void steered_attention_kernel(AttnParams<scalar_t> a) {
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
  const RowRange range = visible_range(i, a.Tq, a.Tk, a.causal, a.window);
  const int64_t lo = range.lo, hi = range.hi;

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
      const float w = span_b[j];
      in_span = w != 0.f;
      s = steer_logit(dot, w, ks, a.softcap, bias);
      if (a.attn_mask.defined()) s = a.attn_mask.apply(s, b, hq, i, j);
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
  const ChannelMix mix = mix_channels(ch[0].m, ch[0].l, ch[1].m, ch[1].l, steered, a.target, a.target_exact);
  const float w0 = mix.f_span, w1 = mix.f_rest;
  const float mass = two ? mix.mass : (ch[0].l > 0.f ? ch[0].ls / ch[0].l : 0.f);
  for (int t = 0; t < kMaxDimPerLane; ++t) {
    const int64_t d = lane + t * kWarp;
    if (d < D) o[d] = w0 * ch[0].acc[t] + (two ? w1 * ch[1].acc[t] : 0.f);
  }
  if (a.span_mass != nullptr && lane == 0) a.span_mass[row] = mass;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> steered_attention_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& span_weights,
    const at::Tensor& bias, const at::Tensor& key_scale, c10::optional<double> target, bool target_exact,
    const c10::optional<at::Tensor>& query_mask, const c10::optional<at::Tensor>& attn_mask, bool is_causal,
    c10::optional<int64_t> window, c10::optional<double> softcap, double scale, bool return_span_mass) {
  const AttentionProblem A = pack_attention(q, k, v, span_weights, bias, key_scale, target, target_exact, query_mask,
                                            attn_mask, is_causal, window, softcap, scale, return_span_mass,
                                            /*as_float=*/false);
  TORCH_CHECK(A.D <= kWarp * kMaxDimPerLane, "steered_attention (CUDA): head_dim ", A.D, " > ", kWarp * kMaxDimPerLane,
              " is not supported");
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = A.out;
  const int64_t rows = A.B * A.Hq * A.Tq;
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "steered_attention_cuda", [&] {
      const AttnParams<scalar_t> a = A.params<scalar_t>();
      const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
      const size_t shmem = kWarpsPerBlock * A.D * sizeof(float);
      steered_attention_kernel<scalar_t>
          <<<blocks, kWarpsPerBlock * kWarp, shmem, c10::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (q.scalar_type() != at::kFloat) out = out.to(q.scalar_type());
  return {out, A.mass};
}

TORCH_LIBRARY_IMPL(attnsteer, CUDA, m) { m.impl("steered_attention", &steered_attention_cuda); }

}  // namespace attnsteer::cuda
