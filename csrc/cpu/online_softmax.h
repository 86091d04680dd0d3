// The online-softmax state of a block of query rows, shared by the fused kernels (dense and
// paged): per channel (span / rest when a target splits them) a running max, sum and output.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "row_ops.h"

namespace attnsteer::cpu {

// Softmax state of `rows` rows in one channel.
struct Channel {
  float* m;    // running max
  float* l;    // running sum
  float* ls;   // running span sum (span-mass diagnostics, one-channel mode)
  float* acc;  // rows x D
};

// Online-softmax update of one row with logits s[0:n) (already masked); turns s into
// probabilities relative to the new max and rescales the row's accumulator.
inline void update_row(float* s, int64_t n, float& m, float& l, float* ls, float* acc_row, int64_t D,
                       const float* span_w) {
  const float bm = row_max(s, n);
  const float new_m = std::max(m, bm);
  if (new_m == -std::numeric_limits<float>::infinity()) {  // nothing visible yet
    std::fill(s, s + n, 0.f);
    return;
  }
  const float sum = exp_sub_sum(s, n, new_m);
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(m - new_m);
  if (alpha != 1.f) {
    scale_inplace(acc_row, D, alpha);
    if (ls) *ls *= alpha;
  }
  l = l * alpha + sum;
  if (ls) *ls += span_sum(s, span_w, n);
  m = new_m;
}

}  // namespace attnsteer::cpu
