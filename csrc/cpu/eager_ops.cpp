// CPU kernels for the eager-path companions of steered_attention: span_bias,
// steered_softmax and scale_keys_ (in-place span key scaling in a KV cache).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common/check.h"
#include "../common/row_math.h"
#include "row_ops.h"

namespace attnsteer::cpu {

// (B, H, Tq or 1, Tk): bias[b, h] * span_weights[b, j], zero on rows that query_mask leaves out.
at::Tensor span_bias_cpu(const at::Tensor& span_weights, const at::Tensor& bias,
                         const c10::optional<at::Tensor>& query_mask, int64_t num_queries, at::ScalarType dtype) {
  TORCH_CHECK(span_weights.dim() == 2, "span_bias: span_weights must be (B, Tk); got ", span_weights.sizes());
  const int64_t B = span_weights.size(0), Tk = span_weights.size(1);
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == B, "span_bias: bias must be (B, H) with B = ", B, "; got ",
              bias.sizes());
  const int64_t H = bias.size(1);
  const bool per_row = query_mask.has_value() && query_mask->defined();
  const int64_t T = per_row ? num_queries : 1;
  if (per_row) {
    TORCH_CHECK(query_mask->sizes() == at::IntArrayRef({B, num_queries}), "span_bias: query_mask must be (B, Tq) = (",
                B, ", ", num_queries, "); got ", query_mask->sizes());
  }
  const at::Tensor span = span_weights.to(at::kFloat).contiguous();
  const at::Tensor bias_f = bias.to(at::kFloat).contiguous();
  const at::Tensor qmask = per_row ? query_mask->to(at::kBool).contiguous() : at::Tensor();
  at::Tensor out = at::empty({B, H, T, Tk}, span.options());
  const float* sp = span.data_ptr<float>();
  const float* bp = bias_f.data_ptr<float>();
  const bool* qm = per_row ? qmask.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H * T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % T, bh = row / T, b = bh / H;
      float* o = op + row * Tk;
      const float beta = (qm == nullptr || qm[b * T + i]) ? bp[bh] : 0.f;
      for (int64_t j = 0; j < Tk; ++j) o[j] = beta * sp[b * Tk + j];
    }
  });
  return dtype == at::kFloat ? out : out.to(dtype);
}

// Steered attention weights from logits (B, H, Tq, Tk) that already hold scale * q.k.
at::Tensor steered_softmax_cpu(const at::Tensor& logits, const at::Tensor& span_weights, const at::Tensor& bias,
                               const at::Tensor& key_scale, c10::optional<double> target, bool target_exact,
                               const c10::optional<at::Tensor>& query_mask, const c10::optional<at::Tensor>& attn_mask,
                               bool is_causal, c10::optional<int64_t> window, c10::optional<double> softcap) {
  TORCH_CHECK(logits.dim() == 4, "steered_softmax: logits must be (B, H, Tq, Tk); got ", logits.sizes());
  const int64_t B = logits.size(0), H = logits.size(1), Tq = logits.size(2), Tk = logits.size(3);
  const Steering st = pack_steering("steered_softmax", B, H, Tq, Tk, logits.device(), span_weights, bias, key_scale,
                                    query_mask, attn_mask);
  at::Tensor x = logits.to(at::kFloat).contiguous();
  if (x.data_ptr() == logits.data_ptr()) x = x.clone();
  const MaskView mview = make_mask_view(st.attn_mask, B, H, Tq, Tk);
  const int64_t win = window.has_value() ? *window : 0;
  const float cap = softcap.has_value() ? static_cast<float>(*softcap) : 0.f;
  const float tau = target.has_value() ? static_cast<float>(*target) : 0.f;
  float* xp = x.data_ptr<float>();
  const float* sp = st.span.data_ptr<float>();
  const float* bp = st.bias.data_ptr<float>();
  const float* kp = st.key_scale.data_ptr<float>();
  const bool* qm = st.query_mask.defined() ? st.query_mask.data_ptr<bool>() : nullptr;
  const float neg_inf = -std::numeric_limits<float>::infinity();

  at::parallel_for(0, B * H * Tq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % Tq, bh = row / Tq, b = bh / H, h = bh % H;
      float* s = xp + row * Tk;
      const float* span_w = sp + b * Tk;
      const bool steered = qm == nullptr || qm[b * Tq + i];
      steer_row(s, span_w, Tk, steered ? kp[bh] : 1.f, cap, steered ? bp[bh] : 0.f);
      if (mview.defined()) mview.apply_row(s, b, h, i, 0, Tk);
      const RowRange rr = visible_range(i, Tq, Tk, is_causal, win);
      for (int64_t j = 0; j < Tk; ++j)
        if (j < rr.lo || j > rr.hi) s[j] = neg_inf;
      if (tau > 0.f) {
        // Span and rest are normalised separately (own max each), then mixed with weights w and
        // 1 - w, so that a span mass that underflows in float is still steered (as the fused op).
        float m_span = neg_inf, m_rest = neg_inf;
        for (int64_t j = 0; j < Tk; ++j) {
          if (span_w[j] != 0.f)
            m_span = std::max(m_span, s[j]);
          else
            m_rest = std::max(m_rest, s[j]);
        }
        const float M = std::max(m_span, m_rest);
        if (M == neg_inf) {
          std::fill(s, s + Tk, 0.f);
          continue;
        }
        float z_span = 0.f, z_rest = 0.f;
        for (int64_t j = 0; j < Tk; ++j) {
          const bool in_span = span_w[j] != 0.f;
          const float mref = in_span ? m_span : m_rest;
          const float e = mref == neg_inf ? 0.f : std::exp(s[j] - mref);
          s[j] = e;
          (in_span ? z_span : z_rest) += e;
        }
        const ChannelMix mix = mix_channels(m_span, z_span, m_rest, z_rest, steered, tau, target_exact);
        for (int64_t j = 0; j < Tk; ++j) s[j] *= span_w[j] != 0.f ? mix.f_span : mix.f_rest;
        continue;
      }
      const float m = row_max(s, Tk);
      if (m == neg_inf) {
        std::fill(s, s + Tk, 0.f);
        continue;
      }
      const float sum = exp_sub_sum(s, Tk, m);
      scale_inplace(s, Tk, 1.f / sum);
    }
  });
  return x.to(logits.scalar_type());
}

// keys (B, Hkv, T, D): keys[b, h, j, :] *= factor[b, h] where span_weights[b, j] != 0.
void scale_keys_cpu(at::Tensor& keys, const at::Tensor& span_weights, const at::Tensor& factor) {
  TORCH_CHECK(keys.dim() == 4, "scale_keys_: keys must be (B, Hkv, T, D); got ", keys.sizes());
  const int64_t B = keys.size(0), H = keys.size(1), T = keys.size(2);
  ATTNSTEER_CHECK_SHAPE("scale_keys_", "span_weights", span_weights, "(B, T)", B, T);
  ATTNSTEER_CHECK_SHAPE("scale_keys_", "factor", factor, "(B, Hkv)", B, H);
  const at::Tensor span_cpu = span_weights.to(at::kFloat).contiguous();
  const at::Tensor fac = factor.to(at::kDouble).contiguous();
  const float* sp = span_cpu.data_ptr<float>();
  const double* fp = fac.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "scale_keys_", [&] {
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        scalar_t* base = keys.data_ptr<scalar_t>() + b * keys.stride(0) + h * keys.stride(1);
        const int64_t st = keys.stride(2), sd = keys.stride(3), D = keys.size(3);
        const double f = fp[bh];
        for (int64_t j = 0; j < T; ++j) {
          if (sp[b * T + j] == 0.f) continue;
          scalar_t* row = base + j * st;
          for (int64_t d = 0; d < D; ++d) row[d * sd] = static_cast<scalar_t>(static_cast<double>(row[d * sd]) * f);
        }
      }
    });
  });
}

// x (B, H, T, D): for rows with span_weights[b, t] = w != 0, x[b, h, t] += w * a[h] (b[h]^T x[b, h, t]),
// a and b (H, D, R) float32; accumulated in float, rounded once into x's dtype.
void lowrank_edit_cpu(at::Tensor& x, const at::Tensor& span_weights, const at::Tensor& a, const at::Tensor& b) {
  const LowRank p = pack_lowrank(x, span_weights, a, b);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), R = a.size(2);
  const float* sp = p.span.data_ptr<float>();
  const float* ap = p.a.data_ptr<float>();
  const float* bp = p.b.data_ptr<float>();
  if (x.numel() == 0 || R == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lowrank_edit_", [&] {
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> row(D), tmp(R);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t bb = bh / H, h = bh % H;
        scalar_t* base = x.data_ptr<scalar_t>() + bb * x.stride(0) + h * x.stride(1);
        const int64_t st = x.stride(2), sd = x.stride(3);
        const float* ah = ap + h * D * R;
        const float* bh_ = bp + h * D * R;
        for (int64_t t = 0; t < T; ++t) {
          const float w = sp[bb * T + t];
          if (w == 0.f) continue;
          scalar_t* xr = base + t * st;
          for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(xr[d * sd]);
          for (int64_t r = 0; r < R; ++r) tmp[r] = 0.f;
          for (int64_t d = 0; d < D; ++d) {
            const float xd = row[d];
            const float* brow = bh_ + d * R;
            for (int64_t r = 0; r < R; ++r) tmp[r] += brow[r] * xd;
          }
          for (int64_t d = 0; d < D; ++d) {
            const float* arow = ah + d * R;
            float acc = 0.f;
            for (int64_t r = 0; r < R; ++r) acc += arow[r] * tmp[r];
            xr[d * sd] = static_cast<scalar_t>(row[d] + w * acc);
          }
        }
      }
    });
  });
}

TORCH_LIBRARY_IMPL(attnsteer, CPU, m) {
  m.impl("span_bias", &span_bias_cpu);
  m.impl("steered_softmax", &steered_softmax_cpu);
  m.impl("scale_keys_", &scale_keys_cpu);
  m.impl("lowrank_edit_", &lowrank_edit_cpu);
}

}  // namespace attnsteer::cpu
