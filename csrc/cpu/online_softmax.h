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

// The two-channel update (SpotLight's target) of one row whose keys s[0:n) (masked) are split by
// span membership: the span keys feed `span`, the others `rest`, in one exp pass; s becomes each
// key's probability relative to its own channel's new max.
inline void update_row_split(float* s, int64_t n, const float* span_w, Channel& span, Channel& rest, int64_t row,
                             int64_t D) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float bm[2];
  split_max(s, span_w, n, &bm[0], &bm[1]);
  Channel* ch[2] = {&span, &rest};
  float new_m[2], sum[2];
  for (int c = 0; c < 2; ++c) new_m[c] = std::max(ch[c]->m[row], bm[c]);
  split_exp_sum(s, span_w, n, new_m[0] == kNegInf ? 0.f : new_m[0], new_m[1] == kNegInf ? 0.f : new_m[1], &sum[0],
                &sum[1]);
  for (int c = 0; c < 2; ++c) {
    float& m = ch[c]->m[row];
    const float alpha = m == kNegInf ? 0.f : std::exp(m - new_m[c]);
    if (alpha != 1.f) scale_inplace(ch[c]->acc + row * D, D, alpha);
    ch[c]->l[row] = ch[c]->l[row] * alpha + sum[c];
    m = new_m[c];
  }
}

}  // namespace attnsteer::cpu
