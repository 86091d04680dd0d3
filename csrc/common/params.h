// The parameters of one fused steered-attention problem, as both kernels read them
// (host and device): raw pointers and sizes, filled by AttentionProblem::params (check.h).
#pragma once
#include <cstdint>

#include "mask_view.h"

namespace attnsteer {

template <typename T>
struct AttnParams {
  // q (B,Hq,Tq,D), k/v (B,Hkv,Tk,D), last dim contiguous, arbitrary other strides.
  const T *q, *k, *v;
  int64_t q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st;
  float* out;                            // (B,Hq,Tq,D) contiguous float32
  float* span_mass;                      // (B,Hq,Tq) or nullptr
  const float* span;                     // (B,Tk) span weights, 0 = not span
  const int64_t* span_prefix = nullptr;  // CPU: (B,Tk+1) prefix counts of span keys
  const float* bias;                     // (B,Hq)
  const float* key_scale;                // (B,Hq)
  const bool* query_mask;                // (B,Tq) or nullptr
  MaskView attn_mask;
  int64_t B, Hq, Hkv, G, Tq, Tk, D;
  bool causal;
  int64_t window;  // <= 0: none
  float softcap;   // <= 0: none
  float scale;
  float target;  // <= 0: none
  bool target_exact;
};

}  // namespace attnsteer
