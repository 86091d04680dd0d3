// Fused steered attention on CPU: flash-style blocked online softmax, no Tq x Tk buffer.
//
// Work unit: (batch, kv head, query block, key split). The query rows of all G query heads
// that share a kv head are packed into one block, so each K/V block is read once per group
// and QK^T / PV are single GEMMs. Key splits only exist when there are too few work units
// to fill the threads (decoding); their partial softmax states are merged afterwards.
//
// Logit order per row: csrc/common/row_math.h (steer_row is its vectorised CPU form). With a
// target, span and rest keep separate (max, sum, acc) channels so that the span mass p is known
// before they are combined (mix_channels).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../common/check.h"
#include "../common/row_math.h"
#include "online_softmax.h"
#include "row_ops.h"

namespace attnsteer::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// T: float (any input dtype widened to float32 first) or at::BFloat16 (bfloat16 inputs read as they
// are: QK^T and PV run as bfloat16 GEMMs with float32 accumulation, the softmax in float32, the
// probabilities split into two bfloat16 parts for PV; see gemm_pv).
template <typename T>
struct Workspace {
  std::vector<T> qpack;
  std::vector<float> scores, scores2;
  std::vector<uint16_t> pbits;  // bfloat16: the probabilities of one block as hi + lo parts, for PV
};

inline const uint16_t* bits(const at::BFloat16* x) { return reinterpret_cast<const uint16_t*>(x); }

// Query row into the packed block. float32: scaled here; bfloat16: as is (the scale goes into the
// GEMM's alpha, so the row is not rounded twice).
inline void pack_row(float* dst, const float* src, int64_t D, float scale) {
  for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * scale;
}
inline void pack_row(at::BFloat16* dst, const at::BFloat16* src, int64_t D, float) { std::copy(src, src + D, dst); }

// S (rows x n) = alpha * Q K^T for one key block.
inline void gemm_qk(int64_t rows, int64_t n, int64_t D, float alpha, const float* qp, const float* kb, int64_t ldk,
                    float* S) {
  gemm_rowmajor(false, true, rows, n, D, alpha, qp, D, kb, ldk, 0.f, S, n);
}
inline void gemm_qk(int64_t rows, int64_t n, int64_t D, float alpha, const at::BFloat16* qp, const at::BFloat16* kb,
                    int64_t ldk, float* S) {
  gemm_bf16_rowmajor(false, true, rows, n, D, alpha, bits(qp), D, bits(kb), ldk, 0.f, S, n);
}

// acc (rows x D) += P V for one key block (P: rows x n, float32).
inline void gemm_pv(int64_t rows, int64_t n, int64_t D, const float* S, const float* vb, int64_t ldv, float* acc,
                    std::vector<uint16_t>&) {
  gemm_rowmajor(false, false, rows, D, n, 1.f, S, n, vb, ldv, 1.f, acc, D);
}
// bfloat16 V: P is split into two bfloat16 parts (hi + lo, ~16 significant bits) and multiplied by V in two
// bfloat16 GEMMs, so PV keeps float32-grade precision at bfloat16 GEMM speed. A single rounding of P to
// bfloat16 (what torch's CPU flash kernel does) was measured at up to 28 bfloat16 ulps off this kernel's
// float32 result and failed the real-model-shaped test at KeyScale 2 (tests/test_model_shapes.py).
inline void gemm_pv(int64_t rows, int64_t n, int64_t D, const float* S, const at::BFloat16* vb, int64_t ldv, float* acc,
                    std::vector<uint16_t>& pbits) {
  uint16_t* hi = pbits.data();
  uint16_t* lo = hi + rows * n;
  float_to_bf16_pair(S, hi, lo, rows * n);
  gemm_bf16_rowmajor(false, false, rows, D, n, 1.f, hi, n, bits(vb), ldv, 1.f, acc, D);
  gemm_bf16_rowmajor(false, false, rows, D, n, 1.f, lo, n, bits(vb), ldv, 1.f, acc, D);
}

// Runs key range [k_begin, k_end) for query rows [q0, q0+qlen) of all G heads of kv head hkv.
// Leaves the un-normalised state in ch[0] (and ch[1] when the problem has a target).
template <typename T>
void run_block(const AttnParams<T>& P, int64_t b, int64_t hkv, int64_t q0, int64_t qlen, int64_t k_begin, int64_t k_end,
               int64_t kblock, Workspace<T>& ws, Channel* ch) {
  const int64_t G = P.G, D = P.D, rows = G * qlen;
  const bool two_channels = P.target > 0.f;
  const int nch = two_channels ? 2 : 1;
  for (int c = 0; c < nch; ++c) {
    std::fill(ch[c].m, ch[c].m + rows, kNegInf);
    std::fill(ch[c].l, ch[c].l + rows, 0.f);
    if (ch[c].ls) std::fill(ch[c].ls, ch[c].ls + rows, 0.f);
    std::fill(ch[c].acc, ch[c].acc + rows * D, 0.f);
  }
  if (k_begin >= k_end) return;

  // Pack the scaled query rows of the group: row r = g*qlen + ii.
  T* qp = ws.qpack.data();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t hq = hkv * G + g;
    for (int64_t ii = 0; ii < qlen; ++ii)
      pack_row(qp + (g * qlen + ii) * D, P.q + b * P.q_sb + hq * P.q_sh + (q0 + ii) * P.q_st, D, P.scale);
  }
  const float qk_alpha = std::is_same<T, float>::value ? 1.f : P.scale;
  const T* kbase = P.k + b * P.k_sb + hkv * P.k_sh;
  const T* vbase = P.v + b * P.v_sb + hkv * P.v_sh;
  const float* span_b = P.span + b * P.Tk;
  const int64_t* prefix = P.span_prefix + b * (P.Tk + 1);

  // Rows whose visible range cuts into a block need per-row masking.
  const RowRange first = visible_range(q0, P.Tq, P.Tk, P.causal, P.window);
  const RowRange last = visible_range(q0 + qlen - 1, P.Tq, P.Tk, P.causal, P.window);

  float* S = ws.scores.data();
  float* S2 = ws.scores2.data();
  for (int64_t j0 = k_begin; j0 < k_end; j0 += kblock) {
    const int64_t n = std::min(kblock, k_end - j0);
    const int64_t n_span = prefix[j0 + n] - prefix[j0];
    const bool any_span = n_span > 0;
    const bool all_span = n_span == n;
    const bool needs_range = j0 < last.lo || j0 + n - 1 > first.hi;
    const float* span_w = span_b + j0;

    gemm_qk(rows, n, D, qk_alpha, qp, kbase + j0 * P.k_st, P.k_st, S);

    for (int64_t r = 0; r < rows; ++r) {
      const int64_t g = r / qlen, ii = r % qlen, hq = hkv * G + g, i = q0 + ii;
      float* s = S + r * n;
      const bool steered = any_span && (P.query_mask == nullptr || P.query_mask[b * P.Tq + i]);
      steer_row(s, span_w, n, steered ? P.key_scale[b * P.Hq + hq] : 1.f, P.softcap,
                steered ? P.bias[b * P.Hq + hq] : 0.f);
      if (P.attn_mask.defined()) P.attn_mask.apply_row(s, b, hq, i, j0, n);
      if (needs_range) {
        const RowRange rr = visible_range(i, P.Tq, P.Tk, P.causal, P.window);
        for (int64_t j = 0; j < n; ++j)
          if (j0 + j < rr.lo || j0 + j > rr.hi) s[j] = kNegInf;
      }
      if (!two_channels) {
        update_row(s, n, ch[0].m[r], ch[0].l[r], ch[0].ls ? ch[0].ls + r : nullptr, ch[0].acc + r * D, D, span_w);
      } else if (all_span || !any_span) {
        const int c = all_span ? 0 : 1;
        update_row(s, n, ch[c].m[r], ch[c].l[r], nullptr, ch[c].acc + r * D, D, span_w);
      } else {  // mixed block: split the row into its span and rest parts
        float* s2 = S2 + r * n;
        std::copy(s, s + n, s2);
        mask_by_span(s, span_w, n, true);
        mask_by_span(s2, span_w, n, false);
        update_row(s, n, ch[0].m[r], ch[0].l[r], nullptr, ch[0].acc + r * D, D, span_w);
        update_row(s2, n, ch[1].m[r], ch[1].l[r], nullptr, ch[1].acc + r * D, D, span_w);
      }
    }
    const T* vb = vbase + j0 * P.v_st;
    if (!two_channels) {
      gemm_pv(rows, n, D, S, vb, P.v_st, ch[0].acc, ws.pbits);
    } else if (all_span || !any_span) {
      gemm_pv(rows, n, D, S, vb, P.v_st, ch[all_span ? 0 : 1].acc, ws.pbits);
    } else {
      gemm_pv(rows, n, D, S, vb, P.v_st, ch[0].acc, ws.pbits);
      gemm_pv(rows, n, D, S2, vb, P.v_st, ch[1].acc, ws.pbits);
    }
  }
}

// Writes the normalised output (and span mass) of the rows held in ch.
template <typename T>
void finalize_block(const AttnParams<T>& P, int64_t b, int64_t hkv, int64_t q0, int64_t qlen, const Channel* ch) {
  const int64_t G = P.G, D = P.D;
  for (int64_t r = 0; r < G * qlen; ++r) {
    const int64_t g = r / qlen, ii = r % qlen, hq = hkv * G + g, i = q0 + ii;
    float* o = P.out + ((b * P.Hq + hq) * P.Tq + i) * D;
    float mass = 0.f;
    std::fill(o, o + D, 0.f);
    const bool steered = P.query_mask == nullptr || P.query_mask[b * P.Tq + i];
    if (P.target <= 0.f) {
      const float l = ch[0].l[r];
      if (l > 0.f) {
        axpy(o, ch[0].acc + r * D, D, 1.f / l);
        if (ch[0].ls) mass = ch[0].ls[r] / l;
      }
    } else {
      const ChannelMix mix =
          mix_channels(ch[0].m[r], ch[0].l[r], ch[1].m[r], ch[1].l[r], steered, P.target, P.target_exact);
      if (mix.f_span != 0.f) axpy(o, ch[0].acc + r * D, D, mix.f_span);
      if (mix.f_rest != 0.f) axpy(o, ch[1].acc + r * D, D, mix.f_rest);
      mass = mix.mass;
    }
    if (P.span_mass) P.span_mass[(b * P.Hq + hq) * P.Tq + i] = mass;
  }
}

// Layout of one block's state inside a flat float buffer.
struct StateLayout {
  int64_t rows, D, nch;
  int64_t per_channel() const { return rows * (3 + D); }
  int64_t size() const { return nch * per_channel(); }
  void bind(float* base, Channel* ch, bool with_ls) const {
    for (int64_t c = 0; c < nch; ++c) {
      float* p = base + c * per_channel();
      ch[c].m = p;
      ch[c].l = p + rows;
      ch[c].ls = with_ls && c == 0 ? p + 2 * rows : nullptr;
      ch[c].acc = p + 3 * rows;
    }
  }
};

template <typename T>
void run(const AttnParams<T>& P) {
  const int64_t threads = at::get_num_threads();
  const int64_t G = P.G, D = P.D;
  // Query block: enough rows for efficient GEMMs, bounded so the score block stays in cache.
  // About 128 rows (all G heads of a kv head) x 256 keys: the score block stays in L2.
  const int64_t qblock = std::max<int64_t>(1, std::min<int64_t>(P.Tq, std::max<int64_t>(16, 128 / G)));
  const int64_t kblock = 256;
  const int64_t n_qblocks = (P.Tq + qblock - 1) / qblock;
  const int64_t units = P.B * P.Hkv * n_qblocks;
  // Split keys when the units cannot keep every thread busy (decode, small batches).
  int64_t n_splits = 1;
  if (units < 4 * threads && P.Tk >= 2 * kblock) {
    n_splits = std::min<int64_t>((P.Tk + kblock - 1) / kblock, (8 * threads + units - 1) / units);
  }
  const int64_t nch = P.target > 0.f ? 2 : 1;
  const bool with_ls = P.span_mass != nullptr && nch == 1;
  const int64_t max_rows = G * qblock;
  const StateLayout layout{max_rows, D, nch};

  std::vector<float> partials;
  if (n_splits > 1) partials.resize(units * n_splits * layout.size());

  at::parallel_for(0, units * n_splits, 1, [&](int64_t begin, int64_t end) {
    SequentialBlas sequential_blas;
    Workspace<T> ws;
    ws.qpack.resize(max_rows * D);
    ws.scores.resize(max_rows * kblock);
    if (nch == 2) ws.scores2.resize(max_rows * kblock);
    if (!std::is_same<T, float>::value) ws.pbits.resize(2 * max_rows * kblock);
    std::vector<float> local(n_splits == 1 ? layout.size() : 0);
    Channel ch[2];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t unit = t / n_splits, split = t % n_splits;
      const int64_t qb = unit % n_qblocks, bh = unit / n_qblocks;
      const int64_t hkv = bh % P.Hkv, b = bh / P.Hkv;
      const int64_t q0 = qb * qblock, qlen = std::min(qblock, P.Tq - q0);
      const StateLayout lay{G * qlen, D, nch};
      lay.bind(n_splits == 1 ? local.data() : partials.data() + t * layout.size(), ch, with_ls);
      // Keys any row of the block can see.
      const RowRange first = visible_range(q0, P.Tq, P.Tk, P.causal, P.window);
      const RowRange last = visible_range(q0 + qlen - 1, P.Tq, P.Tk, P.causal, P.window);
      const int64_t lo = first.lo, hi = std::min<int64_t>(last.hi, P.Tk - 1) + 1;
      int64_t k_begin = lo, k_end = hi;
      if (n_splits > 1 && hi > lo) {
        const int64_t blocks = (hi - lo + kblock - 1) / kblock;
        const int64_t per = (blocks + n_splits - 1) / n_splits;
        k_begin = std::min(hi, lo + split * per * kblock);
        k_end = std::min(hi, lo + (split + 1) * per * kblock);
      }
      run_block(P, b, hkv, q0, qlen, k_begin, k_end, kblock, ws, ch);
      if (n_splits == 1) finalize_block(P, b, hkv, q0, qlen, ch);
    }
  });
  if (n_splits == 1) return;

  // Merge the key splits of every unit, then normalise.
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> merged(layout.size());
    Channel out_ch[2], part[2];
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t qb = unit % n_qblocks, bh = unit / n_qblocks;
      const int64_t hkv = bh % P.Hkv, b = bh / P.Hkv;
      const int64_t q0 = qb * qblock, qlen = std::min(qblock, P.Tq - q0);
      const int64_t rows = G * qlen;
      const StateLayout lay{rows, D, nch};
      lay.bind(merged.data(), out_ch, with_ls);
      for (int64_t c = 0; c < nch; ++c) {
        for (int64_t r = 0; r < rows; ++r) {
          float M = kNegInf;
          for (int64_t s = 0; s < n_splits; ++s) {
            lay.bind(partials.data() + (unit * n_splits + s) * layout.size(), part, with_ls);
            M = std::max(M, part[c].m[r]);
          }
          float l = 0.f, ls = 0.f;
          float* acc = out_ch[c].acc + r * D;
          std::fill(acc, acc + D, 0.f);
          if (M != kNegInf) {
            for (int64_t s = 0; s < n_splits; ++s) {
              lay.bind(partials.data() + (unit * n_splits + s) * layout.size(), part, with_ls);
              if (part[c].m[r] == kNegInf) continue;
              const float f = std::exp(part[c].m[r] - M);
              l += part[c].l[r] * f;
              if (part[c].ls) ls += part[c].ls[r] * f;
              axpy(acc, part[c].acc + r * D, D, f);
            }
          }
          out_ch[c].m[r] = M;
          out_ch[c].l[r] = l;
          if (out_ch[c].ls) out_ch[c].ls[r] = ls;
        }
      }
      finalize_block(P, b, hkv, q0, qlen, out_ch);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> steered_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const at::Tensor& span_weights, const at::Tensor& bias,
                                                         const at::Tensor& key_scale, c10::optional<double> target,
                                                         bool target_exact, const c10::optional<at::Tensor>& query_mask,
                                                         const c10::optional<at::Tensor>& attn_mask, bool is_causal,
                                                         c10::optional<int64_t> window, c10::optional<double> softcap,
                                                         double scale, bool return_span_mass) {
  // bfloat16 q, k and v are read as they are (bfloat16 GEMMs); every other dtype is widened to float32.
  const bool bf16 =
      q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16;
  const AttentionProblem A = pack_attention(q, k, v, span_weights, bias, key_scale, target, target_exact, query_mask,
                                            attn_mask, is_causal, window, softcap, scale, return_span_mass,
                                            /*as_float=*/!bf16);
  const int64_t B = A.B, Tk = A.Tk;
  // Prefix counts of span keys: O(1) classification of key blocks (all / none / mixed).
  at::Tensor span_prefix = at::empty({B, Tk + 1}, A.steering.span.options().dtype(at::kLong));
  {
    const float* sp = A.steering.span.data_ptr<float>();
    int64_t* pp = span_prefix.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      pp[b * (Tk + 1)] = 0;
      for (int64_t j = 0; j < Tk; ++j)
        pp[b * (Tk + 1) + j + 1] = pp[b * (Tk + 1) + j] + (sp[b * Tk + j] != 0.f ? 1 : 0);
    }
  }
  at::Tensor out = A.out;
  if (out.numel() > 0) {
    if (bf16) {
      AttnParams<at::BFloat16> P = A.params<at::BFloat16>();
      P.span_prefix = span_prefix.data_ptr<int64_t>();
      run(P);
    } else {
      AttnParams<float> P = A.params<float>();
      P.span_prefix = span_prefix.data_ptr<int64_t>();
      run(P);
    }
  }
  if (q.scalar_type() != at::kFloat) out = out.to(q.scalar_type());
  return {out, A.mass};
}

TORCH_LIBRARY_IMPL(attnsteer, CPU, m) { m.impl("steered_attention", &steered_attention_cpu); }

}  // namespace attnsteer::cpu
