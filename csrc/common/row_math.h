// Per-row math of the steered softmax, shared by the CPU and CUDA kernels (host and device).
//
// The order of operations (the spec is attnsteer/ops/reference.py's docstring): s = scale*q.k;
// span keys of steered rows s *= key_scale; softcap; steered rows s += bias * w (w = the key's
// span weight); attn_mask; causal / window visibility; softmax. With a SpotLight target, span
// and rest keep separate (max, sum) channels and are mixed with weights w and 1 - w at the end.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define ATTNSTEER_HD __host__ __device__ __forceinline__
#else
#define ATTNSTEER_HD inline
#endif

namespace attnsteer {

// Visible key range [lo, hi] of query row i under bottom-right causal alignment and an
// optional sliding window (key j visible iff (i + Tk - Tq) - j < window; window <= 0: none).
struct RowRange {
  int64_t lo, hi;
};
ATTNSTEER_HD RowRange visible_range(int64_t i, int64_t Tq, int64_t Tk, bool causal, int64_t window) {
  const int64_t pos = i + Tk - Tq;
  RowRange r{0, Tk - 1};
  if (causal && pos < r.hi) r.hi = pos;
  if (window > 0 && pos - window + 1 > r.lo) r.lo = pos - window + 1;
  return r;
}

// The steering part of one logit: key scaling of span keys, softcap, span bias. ks and bias are
// the row's values (pass 1 and 0 for an unsteered row); w is the key's span weight (0 = rest).
ATTNSTEER_HD float steer_logit(float s, float w, float ks, float softcap, float bias) {
  if (w != 0.f) s *= ks;
  if (softcap > 0.f) s = softcap * tanhf(s / softcap);
  return s + bias * w;
}

// SpotLight's weight of the span channel: p = span mass, rest = 1 - p (both from the channel
// sums); when the row is steered, a span key is visible and p < target, the span mass becomes
// target / (target + rest), or exactly target with `exact`.
ATTNSTEER_HD float spotlight_weight(float p, float rest, bool steered, bool has_span, float target, bool exact) {
  if (steered && has_span && p < target) return exact ? target : target / (target + rest);
  return p;
}

// Mixing factors of the span / rest channels, each given by its running (max m, sum l) of
// un-normalised exponentials: out = f_span * acc_span + f_rest * acc_rest, mass = the span
// channel's final weight. target <= 0: one channel (pass the only one as span; f_rest = 0).
struct ChannelMix {
  float f_span, f_rest, mass;
};
ATTNSTEER_HD ChannelMix mix_channels(float m_span, float l_span, float m_rest, float l_rest, bool steered, float target,
                                     bool exact) {
  ChannelMix r{0.f, 0.f, 0.f};
  if (target <= 0.f) {
    if (l_span > 0.f) r.f_span = 1.f / l_span;
    return r;
  }
  const float M = m_span > m_rest ? m_span : m_rest;
  if (M == -INFINITY) return r;  // nothing visible
  const float a0 = l_span > 0.f ? l_span * expf(m_span - M) : 0.f;
  const float a1 = l_rest > 0.f ? l_rest * expf(m_rest - M) : 0.f;
  const float p = a0 / (a0 + a1), rest = a1 / (a0 + a1);
  // has_span: l_span > 0 iff a span key is visible; a0 may underflow in float (span logits
  // scaled by key_scale = 100 sit hundreds below the rest) while the true p is still positive.
  const float w = spotlight_weight(p, rest, steered, l_span > 0.f, target, exact);
  r.f_span = l_span > 0.f ? w / l_span : 0.f;
  r.f_rest = l_rest > 0.f ? (1.f - w) / l_rest : 0.f;
  r.mass = w;
  return r;
}

}  // namespace attnsteer
