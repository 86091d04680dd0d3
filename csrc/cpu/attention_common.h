// Shared description of one steered-attention problem, used by the CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <limits>

namespace attnsteer::cpu {

// Optional additive / boolean mask, broadcast like SDPA's attn_mask over (B, Hq, Tq, Tk).
struct MaskView {
  const void* data = nullptr;
  bool is_bool = false;
  int64_t sb = 0, sh = 0, sq = 0, sk = 0;  // element strides, 0 on broadcast dims

  bool defined() const { return data != nullptr; }
  // Adds the mask of row (b, h, i) over keys [j0, j0 + n) to s (bool False -> -inf).
  void apply(float* s, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n) const {
    const int64_t base = b * sb + h * sh + i * sq + j0 * sk;
    if (is_bool) {
      const bool* m = static_cast<const bool*>(data) + base;
      for (int64_t j = 0; j < n; ++j)
        if (!m[j * sk]) s[j] = -std::numeric_limits<float>::infinity();
    } else {
      const float* m = static_cast<const float*>(data) + base;
      for (int64_t j = 0; j < n; ++j) s[j] += m[j * sk];
    }
  }
};

// attn_mask as the kernels read it: bool masks as they are, float masks of any dtype as float32.
inline c10::optional<at::Tensor> kernel_mask(const c10::optional<at::Tensor>& attn_mask) {
  if (!attn_mask.has_value() || !attn_mask->defined()) return c10::nullopt;
  return attn_mask->scalar_type() == at::kBool ? *attn_mask : attn_mask->to(at::kFloat);
}

// Builds a MaskView over a (<=4)-D mask broadcastable to (B, H, Tq, Tk). The tensor must be
// bool or float32 and outlive the view.
inline MaskView make_mask_view(const c10::optional<at::Tensor>& mask, int64_t B, int64_t H,
                               int64_t Tq, int64_t Tk) {
  MaskView view;
  if (!mask.has_value() || !mask->defined()) return view;
  at::Tensor m = mask->dim() < 4 ? mask->view([&] {
    std::vector<int64_t> shape(4 - mask->dim(), 1);
    for (auto s : mask->sizes()) shape.push_back(s);
    return shape;
  }()) : *mask;
  m = m.expand({B, H, Tq, Tk});
  view.data = m.data_ptr();
  view.is_bool = m.scalar_type() == at::kBool;
  view.sb = m.stride(0);
  view.sh = m.stride(1);
  view.sq = m.stride(2);
  view.sk = m.stride(3);
  return view;
}

// Visible key range [lo, hi] of query row i under bottom-right causal alignment and an
// optional sliding window (key j visible iff (i + Tk - Tq) - j < window).
struct RowRange {
  int64_t lo, hi;
};
inline RowRange visible_range(int64_t i, int64_t Tq, int64_t Tk, bool causal, int64_t window) {
  const int64_t pos = i + Tk - Tq;
  RowRange r{0, Tk - 1};
  if (causal) r.hi = std::min<int64_t>(pos, Tk - 1);
  if (window > 0) r.lo = std::max<int64_t>(0, pos - window + 1);
  return r;
}

}  // namespace attnsteer::cpu
