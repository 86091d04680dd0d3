// Fused steered attention over a paged KV cache (vLLM's layout), CPU.
//
// One call serves a whole step: the query tokens of every request packed as (N, Hq, D), their
// keys and values read through each request's block table, per-request span weights and
// per-request bias / key scale / target, per-token query mask. Causal by position: query i of
// request r (n_r query tokens, L_r keys) sits at position L_r - n_r + i. Memory is O(block): K and
// V are read block by block into a float workspace, never gathered per request.
//
// Cache layout: key_cache / value_cache are (num_blocks, Hkv, block_size, D) views whose inner
// (block_size, D) region is contiguous. vLLM's CPU vector paths store K transposed in that region
// ([D][block_size]); `k_transposed` says so. V is row-major ([block_size][D]).
//
// Logit order and channel mix: csrc/common/row_math.h, as the dense kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/check.h"
#include "../common/row_math.h"
#include "online_softmax.h"
#include "row_ops.h"

namespace attnsteer::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct PagedProblem {
  const void *k, *v;  // cache base pointers (element type T)
  int64_t k_sb, k_sh, v_sb, v_sh;
  bool k_transposed;
  int64_t block_size;
  const float* q;              // (N, Hq, D) float32 contiguous
  float* out;                  // (N, Hq, D)
  float* span_mass;            // (N, Hq) or nullptr
  const int64_t* block_table;  // (R, max_blocks)
  int64_t max_blocks;
  const int64_t* seq_lens;  // (R,)
  const int64_t* q_start;   // (R + 1,)
  const float* span;        // (R, S)
  int64_t S;
  const float* bias;       // (R, Hq)
  const float* key_scale;  // (R, Hq)
  const bool* query_mask;  // (N,) or nullptr
  int64_t R, Hq, Hkv, G, D;
  int64_t window;
  float softcap, scale, target;
  bool target_exact;
};

// K and V of block `phys`, kv head h, as float: straight from the cache when it holds float (no
// copy), else converted into kb / vb in the cache's own layout (K [D][block_size] when
// transposed, else [n][D]; V [n][D]). Returns K's row stride.
template <typename T>
int64_t block_kv(const PagedProblem& P, int64_t phys, int64_t h, int64_t n, float* kb, float* vb, const float** kp,
                 const float** vp) {
  const T* k = static_cast<const T*>(P.k) + phys * P.k_sb + h * P.k_sh;
  const T* v = static_cast<const T*>(P.v) + phys * P.v_sb + h * P.v_sh;
  const int64_t D = P.D, bs = P.block_size, ldk = P.k_transposed ? bs : D;
  if constexpr (std::is_same_v<T, float>) {
    *kp = k;
    *vp = v;
  } else {
    if (P.k_transposed) {
      for (int64_t d = 0; d < D; ++d)
        for (int64_t t = 0; t < n; ++t) kb[d * bs + t] = static_cast<float>(k[d * bs + t]);
    } else {
      for (int64_t i = 0; i < n * D; ++i) kb[i] = static_cast<float>(k[i]);
    }
    for (int64_t i = 0; i < n * D; ++i) vb[i] = static_cast<float>(v[i]);
    *kp = kb;
    *vp = vb;
  }
  return ldk;
}

template <typename T>
void run(const PagedProblem& P) {
  const int64_t G = P.G, D = P.D, bs = P.block_size;
  // query rows per unit: large blocks amortise reading each K/V block (a prefill chunk), small
  // ones still split a single decode row per kv head
  const int64_t qblock = std::max<int64_t>(1, 128 / G);
  // work units: (request, kv head, query block)
  std::vector<int64_t> unit_r, unit_q0;
  for (int64_t r = 0; r < P.R; ++r) {
    const int64_t nq = P.q_start[r + 1] - P.q_start[r];
    for (int64_t q0 = 0; q0 < nq; q0 += qblock) {
      unit_r.push_back(r);
      unit_q0.push_back(q0);
    }
  }
  const int64_t units = static_cast<int64_t>(unit_r.size()) * P.Hkv;
  const bool two = P.target > 0.f;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    SequentialBlas sequential_blas;
    const int64_t max_rows = G * qblock;
    std::vector<float> qp(max_rows * D), S(max_rows * bs), Sp(max_rows * bs), kb(bs * D), vb(bs * D), vsp(bs * D),
        span_buf(bs);
    std::vector<float> state(2 * max_rows * (3 + D));
    for (int64_t u = begin; u < end; ++u) {
      const int64_t hkv = u % P.Hkv, ui = u / P.Hkv;
      const int64_t r = unit_r[ui], q0 = unit_q0[ui];
      const int64_t nq = P.q_start[r + 1] - P.q_start[r], L = P.seq_lens[r];
      const int64_t qlen = std::min(qblock, nq - q0), rows = G * qlen;
      Channel ch[2];
      for (int c = 0; c < 2; ++c) {
        float* p = state.data() + c * max_rows * (3 + D);
        ch[c] =
            Channel{p, p + max_rows, (c == 0 && !two && P.span_mass) ? p + 2 * max_rows : nullptr, p + 3 * max_rows};
        std::fill(ch[c].m, ch[c].m + rows, kNegInf);
        std::fill(ch[c].l, ch[c].l + rows, 0.f);
        if (ch[c].ls) std::fill(ch[c].ls, ch[c].ls + rows, 0.f);
        std::fill(ch[c].acc, ch[c].acc + rows * D, 0.f);
      }
      const int64_t tok0 = P.q_start[r] + q0;  // first packed token of the block
      for (int64_t g = 0; g < G; ++g)
        for (int64_t ii = 0; ii < qlen; ++ii) {
          const float* src = P.q + ((tok0 + ii) * P.Hq + hkv * G + g) * D;
          float* dst = qp.data() + (g * qlen + ii) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * P.scale;
        }
      // keys any row of the block can see (positions of its first and last query)
      const RowRange first = visible_range(q0, nq, L, true, P.window);
      const RowRange last = visible_range(q0 + qlen - 1, nq, L, true, P.window);
      const float* span_r = P.span + r * P.S;
      for (int64_t jb = first.lo / bs; jb * bs <= last.hi; ++jb) {
        // keys past the last row's are not read (rounded up to 16 for the vector loops)
        const int64_t j0 = jb * bs, n = std::min({bs, L - j0, (last.hi + 1 - j0 + 15) / 16 * 16});
        if (n <= 0) break;
        const int64_t phys = P.block_table[r * P.max_blocks + jb];
        const float *kp, *vp;
        const int64_t ldk = block_kv<T>(P, phys, hkv, n, kb.data(), vb.data(), &kp, &vp);
        for (int64_t t = 0; t < n; ++t) span_buf[t] = j0 + t < P.S ? span_r[j0 + t] : 0.f;
        int64_t n_span = 0;
        for (int64_t t = 0; t < n; ++t) n_span += span_buf[t] != 0.f;
        if (P.k_transposed)
          scores_kt(qp.data(), rows, D, kp, ldk, n, S.data(), n);
        else
          gemm_rowmajor(false, !P.k_transposed, rows, n, D, 1.f, qp.data(), D, kp, ldk, 0.f, S.data(), n);
        // With a target, a block with no span key (or only span keys) feeds one channel alone:
        // its probabilities go to that channel without a second pass or product.
        const bool mixed = two && n_span > 0 && n_span < n;
        const int single = two && n_span == 0 ? 1 : 0;  // the channel of an unmixed block
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t g = row / qlen, ii = row % qlen, hq = hkv * G + g, i = q0 + ii;
          float* s = S.data() + row * n;
          // the keys of this block the row sees, [lo, hi): the rest get probability 0
          const RowRange rr = visible_range(i, nq, L, true, P.window);
          const int64_t lo = std::clamp<int64_t>(rr.lo - j0, 0, n), hi = std::clamp<int64_t>(rr.hi - j0 + 1, lo, n);
          const int64_t w = hi - lo;
          const float* sw = span_buf.data() + lo;
          std::fill(s, s + lo, 0.f);
          std::fill(s + hi, s + n, 0.f);
          if (w == 0) continue;
          const bool steered = n_span > 0 && (P.query_mask == nullptr || P.query_mask[tok0 + ii]);
          steer_row(s + lo, sw, w, steered ? P.key_scale[r * P.Hq + hq] : 1.f, P.softcap,
                    steered ? P.bias[r * P.Hq + hq] : 0.f);
          if (!mixed) {
            Channel& c = ch[single];
            update_row(s + lo, w, c.m[row], c.l[row], c.ls ? c.ls + row : nullptr, c.acc + row * D, D, sw);
          } else {
            update_row_split(s + lo, w, sw, ch[0], ch[1], row, D);
          }
        }
        auto pv = [&](const float* p, int64_t cols, int64_t ldp, const float* v, float* acc) {
          if (P.k_transposed)
            pv_rows(p, rows, cols, ldp, v, D, D, acc, D);
          else
            gemm_rowmajor(false, false, rows, D, cols, 1.f, p, ldp, v, D, 1.f, acc, D);
        };
        if (!mixed) {
          pv(S.data(), n, n, vp, ch[single].acc);
        } else {
          // the span keys' probabilities and values compacted for the span channel (n_span
          // columns); zeros left in their place for the rest channel's product
          for (int64_t t = 0, k = 0; t < n; ++t)
            if (span_buf[t] != 0.f) {
              std::copy(vp + t * D, vp + t * D + D, vsp.data() + k * D);
              for (int64_t row = 0; row < rows; ++row) {
                Sp[row * n_span + k] = S[row * n + t];
                S[row * n + t] = 0.f;
              }
              ++k;
            }
          pv(S.data(), n, n, vp, ch[1].acc);
          pv(Sp.data(), n_span, n_span, vsp.data(), ch[0].acc);
        }
      }
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t g = row / qlen, ii = row % qlen, hq = hkv * G + g;
        const int64_t tok = tok0 + ii;
        float* o = P.out + (tok * P.Hq + hq) * D;
        std::fill(o, o + D, 0.f);
        const bool steered = P.query_mask == nullptr || P.query_mask[tok];
        const ChannelMix mix = two ? mix_channels(ch[0].m[row], ch[0].l[row], ch[1].m[row], ch[1].l[row], steered,
                                                  P.target, P.target_exact)
                                   : mix_channels(ch[0].m[row], ch[0].l[row], kNegInf, 0.f, steered, 0.f, false);
        if (mix.f_span != 0.f) axpy(o, ch[0].acc + row * D, D, mix.f_span);
        if (two && mix.f_rest != 0.f) axpy(o, ch[1].acc + row * D, D, mix.f_rest);
        if (P.span_mass) {
          const float mass = two ? mix.mass : (ch[0].l[row] > 0.f ? ch[0].ls[row] / ch[0].l[row] : 0.f);
          P.span_mass[tok * P.Hq + hq] = mass;
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> steered_attention_paged_cpu(
    const at::Tensor& q, const at::Tensor& key_cache, const at::Tensor& value_cache, bool k_transposed,
    const at::Tensor& block_table, const at::Tensor& seq_lens, const at::Tensor& query_start_loc,
    const at::Tensor& span_weights, const at::Tensor& bias, const at::Tensor& key_scale, c10::optional<double> target,
    bool target_exact, const c10::optional<at::Tensor>& query_mask, c10::optional<int64_t> window,
    c10::optional<double> softcap, double scale, bool return_span_mass) {
  constexpr const char* op = "steered_attention_paged";
  TORCH_CHECK(q.dim() == 3, op, ": q must be (N, Hq, D) packed query tokens; got ", q.sizes());
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.dim() == 4, op,
              ": key_cache and value_cache must be (num_blocks, Hkv, block_size, D); got ", key_cache.sizes(), " and ",
              value_cache.sizes());
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hkv = key_cache.size(1), bs = key_cache.size(2);
  ATTNSTEER_CHECK_SHAPE(op, "key_cache", key_cache, "(num_blocks, Hkv, block_size, D)", key_cache.size(0), Hkv, bs, D);
  ATTNSTEER_CHECK_SHAPE(op, "value_cache", value_cache, "(num_blocks, Hkv, block_size, D)", key_cache.size(0), Hkv, bs,
                        D);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": query heads (", Hq, ") must be a multiple of key/value heads (", Hkv,
              ")");
  for (const at::Tensor* c : {&key_cache, &value_cache})
    TORCH_CHECK(c->stride(3) == 1 && c->stride(2) == D, op,
                ": each (block, head) region of the caches must be contiguous (block_size x D); got strides ",
                c->strides());
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(), op, ": the caches must share a dtype");
  const int64_t R = seq_lens.size(0);
  ATTNSTEER_CHECK_SHAPE(op, "query_start_loc", query_start_loc, "(R + 1,)", R + 1);
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == R, op,
              ": block_table must be (R, max_blocks) with R = ", R, "; got ", block_table.sizes());
  TORCH_CHECK(span_weights.dim() == 2 && span_weights.size(0) == R, op,
              ": span_weights must be (R, S) span weights per request and key position; got ", span_weights.sizes());
  ATTNSTEER_CHECK_SHAPE(op, "bias", bias, "(R, Hq)", R, Hq);
  ATTNSTEER_CHECK_SHAPE(op, "key_scale", key_scale, "(R, Hq)", R, Hq);
  const at::Tensor qsl = query_start_loc.to(at::kLong).contiguous(), sl = seq_lens.to(at::kLong).contiguous();
  const at::Tensor bt = block_table.to(at::kLong).contiguous();
  const int64_t* qs = qsl.data_ptr<int64_t>();
  const int64_t* lens = sl.data_ptr<int64_t>();
  TORCH_CHECK(qs[0] == 0 && qs[R] == N, op, ": query_start_loc must run from 0 to N = ", N);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t nq = qs[r + 1] - qs[r];
    TORCH_CHECK(nq >= 0 && lens[r] >= nq, op, ": request ", r, " has ", nq, " query tokens but ", lens[r], " keys");
    TORCH_CHECK((lens[r] + bs - 1) / bs <= bt.size(1), op, ": request ", r, " needs ", (lens[r] + bs - 1) / bs,
                " blocks but block_table has ", bt.size(1));
  }
  at::Tensor qmask;
  if (query_mask.has_value() && query_mask->defined()) {
    ATTNSTEER_CHECK_SHAPE(op, "query_mask", *query_mask, "(N,)", N);
    qmask = query_mask->to(at::kBool).contiguous();
  }
  TORCH_CHECK(!target.has_value() || (*target > 0.0 && *target < 1.0), op, ": target must lie in (0, 1)");
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  const at::Tensor span = span_weights.to(at::kFloat).contiguous();
  const at::Tensor bias_f = bias.to(at::kFloat).contiguous(), ks_f = key_scale.to(at::kFloat).contiguous();
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor out = at::zeros({N, Hq, D}, f32);
  at::Tensor mass = return_span_mass ? at::zeros({N, Hq}, f32) : at::empty({0}, f32);
  if (N > 0) {
    PagedProblem P;
    P.k = key_cache.data_ptr();
    P.v = value_cache.data_ptr();
    P.k_sb = key_cache.stride(0), P.k_sh = key_cache.stride(1);
    P.v_sb = value_cache.stride(0), P.v_sh = value_cache.stride(1);
    P.k_transposed = k_transposed;
    P.block_size = bs;
    P.q = qf.data_ptr<float>();
    P.out = out.data_ptr<float>();
    P.span_mass = return_span_mass ? mass.data_ptr<float>() : nullptr;
    P.block_table = bt.data_ptr<int64_t>();
    P.max_blocks = bt.size(1);
    P.seq_lens = lens;
    P.q_start = qs;
    P.span = span.data_ptr<float>();
    P.S = span.size(1);
    P.bias = bias_f.data_ptr<float>();
    P.key_scale = ks_f.data_ptr<float>();
    P.query_mask = qmask.defined() ? qmask.data_ptr<bool>() : nullptr;
    P.R = R, P.Hq = Hq, P.Hkv = Hkv, P.G = Hq / Hkv, P.D = D;
    P.window = window.has_value() ? *window : 0;
    P.softcap = softcap.has_value() ? static_cast<float>(*softcap) : 0.f;
    P.scale = static_cast<float>(scale);
    P.target = target.has_value() ? static_cast<float>(*target) : 0.f;
    P.target_exact = target_exact;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, key_cache.scalar_type(), "steered_attention_paged",
                                    [&] { run<scalar_t>(P); });
  }
  if (q.scalar_type() != at::kFloat) out = out.to(q.scalar_type());
  return {out, mass};
}

TORCH_LIBRARY_IMPL(attnsteer, CPU, m) { m.impl("steered_attention_paged", &steered_attention_paged_cpu); }

}  // namespace attnsteer::cpu
