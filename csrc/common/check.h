// Host side shared by the CPU and CUDA kernels: named shape / device / dtype checks on the
// schema arguments and their packing into the parameter structs the kernels read.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "mask_view.h"
#include "params.h"

namespace attnsteer {

// e.g. ATTNSTEER_CHECK_SHAPE(op, "k", k, "(B, Hkv, Tk, D)", B, Hkv, Tk, D)
#define ATTNSTEER_CHECK_SHAPE(op, name, t, dims, ...)                                                  \
  TORCH_CHECK((t).sizes() == at::IntArrayRef({__VA_ARGS__}), op, ": ", name, " must be ", dims, " = ", \
              at::IntArrayRef({__VA_ARGS__}), "; got ", (t).sizes())
#define ATTNSTEER_CHECK_DEVICE(op, name, t, dev) \
  TORCH_CHECK((t).device() == (dev), op, ": ", name, " is on ", (t).device(), " but the inputs are on ", dev)

// The steering arguments of a (B, H, Tq, Tk) problem, checked and converted: span weights,
// bias and key scale as contiguous float32, the query mask as contiguous bool (undefined when
// absent), the attn_mask as bool or float32 (undefined when absent).
struct Steering {
  at::Tensor span, bias, key_scale, query_mask, attn_mask;
};

inline Steering pack_steering(const char* op, int64_t B, int64_t H, int64_t Tq, int64_t Tk, at::Device device,
                              const at::Tensor& span_weights, const at::Tensor& bias, const at::Tensor& key_scale,
                              const c10::optional<at::Tensor>& query_mask, const c10::optional<at::Tensor>& attn_mask) {
  Steering s;
  ATTNSTEER_CHECK_SHAPE(op, "span_weights", span_weights, "(B, Tk)", B, Tk);
  ATTNSTEER_CHECK_SHAPE(op, "bias", bias, "(B, H)", B, H);
  ATTNSTEER_CHECK_SHAPE(op, "key_scale", key_scale, "(B, H)", B, H);
  ATTNSTEER_CHECK_DEVICE(op, "span_weights", span_weights, device);
  ATTNSTEER_CHECK_DEVICE(op, "bias", bias, device);
  ATTNSTEER_CHECK_DEVICE(op, "key_scale", key_scale, device);
  s.span = span_weights.to(at::kFloat).contiguous();
  s.bias = bias.to(at::kFloat).contiguous();
  s.key_scale = key_scale.to(at::kFloat).contiguous();
  if (query_mask.has_value() && query_mask->defined()) {
    ATTNSTEER_CHECK_SHAPE(op, "query_mask", *query_mask, "(B, Tq)", B, Tq);
    ATTNSTEER_CHECK_DEVICE(op, "query_mask", *query_mask, device);
    s.query_mask = query_mask->to(at::kBool).contiguous();
  }
  if (attn_mask.has_value() && attn_mask->defined()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK(m.dim() <= 4, op, ": attn_mask must have at most 4 dims; got ", m.sizes());
    ATTNSTEER_CHECK_DEVICE(op, "attn_mask", m, device);
    const int64_t full[4] = {B, H, Tq, Tk};
    for (int64_t d = 0; d < m.dim(); ++d) {
      const int64_t size = m.size(m.dim() - 1 - d), want = full[3 - d];
      TORCH_CHECK(size == 1 || size == want, op, ": attn_mask ", m.sizes(), " does not broadcast to (B, H, Tq, Tk) = (",
                  B, ", ", H, ", ", Tq, ", ", Tk, ")");
    }
    // bool masks as they are, float masks of any dtype as float32
    s.attn_mask = m.scalar_type() == at::kBool ? m : m.to(at::kFloat);
  }
  return s;
}

// A MaskView over a (<= 4)-D mask broadcastable to (B, H, Tq, Tk); the tensor must outlive it.
inline MaskView make_mask_view(const at::Tensor& mask, int64_t B, int64_t H, int64_t Tq, int64_t Tk) {
  MaskView view;
  if (!mask.defined()) return view;
  std::vector<int64_t> shape(4 - mask.dim(), 1);
  for (auto s : mask.sizes()) shape.push_back(s);
  const at::Tensor m = mask.view(shape).expand({B, H, Tq, Tk});
  view.data = m.data_ptr();
  view.is_bool = m.scalar_type() == at::kBool;
  view.sb = m.stride(0);
  view.sh = m.stride(1);
  view.sq = m.stride(2);
  view.sk = m.stride(3);
  return view;
}

// Everything the fused attention kernels need, checked: inputs with a contiguous last dim
// (as float32 when `as_float`), the steering tensors, and the outputs (float32 out, span mass).
struct AttentionProblem {
  at::Tensor q, k, v, out, mass;
  Steering steering;
  int64_t B, Hq, Hkv, Tq, Tk, D;
  bool causal, target_exact;
  int64_t window;
  float softcap, scale, target;

  // The kernels' parameter struct over these tensors (element type T = the inputs' dtype).
  template <typename T>
  AttnParams<T> params() const {
    AttnParams<T> P;
    P.q = q.data_ptr<T>();
    P.k = k.data_ptr<T>();
    P.v = v.data_ptr<T>();
    P.q_sb = q.stride(0), P.q_sh = q.stride(1), P.q_st = q.stride(2);
    // A single key row's stride is never stepped over; D keeps it a valid BLAS leading dimension.
    P.k_sb = k.stride(0), P.k_sh = k.stride(1), P.k_st = Tk == 1 ? D : k.stride(2);
    P.v_sb = v.stride(0), P.v_sh = v.stride(1), P.v_st = Tk == 1 ? D : v.stride(2);
    P.out = out.data_ptr<float>();
    P.span_mass = mass.numel() > 0 ? mass.data_ptr<float>() : nullptr;
    P.span = steering.span.data_ptr<float>();
    P.bias = steering.bias.data_ptr<float>();
    P.key_scale = steering.key_scale.data_ptr<float>();
    P.query_mask = steering.query_mask.defined() ? steering.query_mask.data_ptr<bool>() : nullptr;
    P.attn_mask = make_mask_view(steering.attn_mask, B, Hq, Tq, Tk);
    P.B = B, P.Hq = Hq, P.Hkv = Hkv, P.G = Hq / Hkv, P.Tq = Tq, P.Tk = Tk, P.D = D;
    P.causal = causal;
    P.window = window;
    P.softcap = softcap;
    P.scale = scale;
    P.target = target;
    P.target_exact = target_exact;
    return P;
  }
};

inline AttentionProblem pack_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& span_weights, const at::Tensor& bias,
                                       const at::Tensor& key_scale, c10::optional<double> target, bool target_exact,
                                       const c10::optional<at::Tensor>& query_mask,
                                       const c10::optional<at::Tensor>& attn_mask, bool is_causal,
                                       c10::optional<int64_t> window, c10::optional<double> softcap, double scale,
                                       bool return_span_mass, bool as_float) {
  constexpr const char* op = "steered_attention";
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q, k, v must be 4-D (B, H, T, D); got q ", q.sizes(),
              ", k ", k.sizes(), ", v ", v.sizes());
  AttentionProblem P;
  P.B = q.size(0), P.Hq = q.size(1), P.Tq = q.size(2), P.D = q.size(3);
  P.Hkv = k.size(1), P.Tk = k.size(2);
  ATTNSTEER_CHECK_SHAPE(op, "k", k, "(B, Hkv, Tk, D)", P.B, P.Hkv, P.Tk, P.D);
  ATTNSTEER_CHECK_SHAPE(op, "v", v, "(B, Hkv, Tk, D)", P.B, P.Hkv, P.Tk, P.D);
  TORCH_CHECK(P.Hkv > 0 && P.Hq % P.Hkv == 0, op, ": query heads (", P.Hq, ") must be a multiple of key/value heads (",
              P.Hkv, ")");
  ATTNSTEER_CHECK_DEVICE(op, "k", k, q.device());
  ATTNSTEER_CHECK_DEVICE(op, "v", v, q.device());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), op,
              ": q, k, v must share a dtype; got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(!target.has_value() || (*target > 0.0 && *target < 1.0), op, ": target must lie in (0, 1); got ",
              target.has_value() ? *target : 0.0);
  TORCH_CHECK(!window.has_value() || *window > 0, op, ": window must be positive; got ",
              window.has_value() ? *window : 0);
  P.steering =
      pack_steering(op, P.B, P.Hq, P.Tq, P.Tk, q.device(), span_weights, bias, key_scale, query_mask, attn_mask);
  auto prepare = [as_float](const at::Tensor& t) {
    const at::Tensor x = as_float && t.scalar_type() != at::kFloat ? t.to(at::kFloat) : t;
    // Rows of D contiguous values at a row stride of at least D (what the CPU kernel's GEMMs take as a
    // leading dimension); anything else — a broadcast key (stride 0), overlapping rows — is copied first.
    const bool rows_ok = x.stride(-1) == 1 && (x.size(-2) <= 1 || x.stride(-2) >= x.size(-1));
    return rows_ok ? x : x.contiguous();
  };
  P.q = prepare(q), P.k = prepare(k), P.v = prepare(v);
  const auto f32 = q.options().dtype(at::kFloat);
  P.out = at::empty({P.B, P.Hq, P.Tq, P.D}, f32);
  P.mass = return_span_mass ? at::empty({P.B, P.Hq, P.Tq}, f32) : at::empty({0}, f32);
  P.causal = is_causal;
  P.window = window.has_value() ? *window : 0;
  P.softcap = softcap.has_value() ? static_cast<float>(*softcap) : 0.f;
  P.scale = static_cast<float>(scale);
  P.target = target.has_value() ? static_cast<float>(*target) : 0.f;
  P.target_exact = target_exact;
  return P;
}

// lowrank_edit_'s arguments: x (B, H, T, D), span_weights (B, T), a and b (H, D, R) on x's device,
// converted to contiguous float32. Returns {span, a, b}.
struct LowRank {
  at::Tensor span, a, b;
};

inline LowRank pack_lowrank(const at::Tensor& x, const at::Tensor& span_weights, const at::Tensor& a,
                            const at::Tensor& b) {
  TORCH_CHECK(x.dim() == 4, "lowrank_edit_: x must be (B, H, T, D); got ", x.sizes());
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3, "lowrank_edit_: a and b must be (H, D, R); got ", a.sizes(), " and ",
              b.sizes());
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), R = a.size(2);
  ATTNSTEER_CHECK_SHAPE("lowrank_edit_", "span_weights", span_weights, "(B, T)", B, T);
  ATTNSTEER_CHECK_SHAPE("lowrank_edit_", "a", a, "(H, D, R)", H, D, R);
  ATTNSTEER_CHECK_SHAPE("lowrank_edit_", "b", b, "(H, D, R)", H, D, R);
  ATTNSTEER_CHECK_DEVICE("lowrank_edit_", "span_weights", span_weights, x.device());
  ATTNSTEER_CHECK_DEVICE("lowrank_edit_", "a", a, x.device());
  ATTNSTEER_CHECK_DEVICE("lowrank_edit_", "b", b, x.device());
  return {span_weights.to(at::kFloat).contiguous(), a.to(at::kFloat).contiguous(), b.to(at::kFloat).contiguous()};
}

}  // namespace attnsteer
