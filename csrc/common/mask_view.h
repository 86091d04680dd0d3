// A view of the optional attn_mask, broadcast like SDPA's over (B, H, Tq, Tk): element
// strides with 0 on broadcast dims. Host and device read it the same way.
#pragma once
#include <cmath>
#include <cstdint>

#include "row_math.h"

namespace attnsteer {

struct MaskView {
  const void* data = nullptr;
  bool is_bool = false;
  int64_t sb = 0, sh = 0, sq = 0, sk = 0;

  ATTNSTEER_HD bool defined() const { return data != nullptr; }
  // The logit s of key j in row (b, h, i) after the mask: bool False -> -inf, float added.
  ATTNSTEER_HD float apply(float s, int64_t b, int64_t h, int64_t i, int64_t j) const {
    const int64_t off = b * sb + h * sh + i * sq + j * sk;
    if (is_bool) return static_cast<const bool*>(data)[off] ? s : -INFINITY;
    return s + static_cast<const float*>(data)[off];
  }
  // Keys [j0, j0 + n) of row (b, h, i), in place.
  ATTNSTEER_HD void apply_row(float* s, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n) const {
    const int64_t base = b * sb + h * sh + i * sq + j0 * sk;
    if (is_bool) {
      const bool* m = static_cast<const bool*>(data) + base;
      for (int64_t j = 0; j < n; ++j)
        if (!m[j * sk]) s[j] = -INFINITY;
    } else {
      const float* m = static_cast<const float*>(data) + base;
      for (int64_t j = 0; j < n; ++j) s[j] += m[j * sk];
    }
  }
};

}  // namespace attnsteer
