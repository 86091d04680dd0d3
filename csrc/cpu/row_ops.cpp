#include "row_ops.h"

#include <ATen/ATen.h>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#pragma GCC diagnostic ignored "-Wpsabi"

// BLAS from the MKL/OpenBLAS that libtorch_cpu carries. Weak, so that a torch build without
// an exported sgemm_ still loads us; then gemm_rowmajor goes through at::addmm_out.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

// MKL's bfloat16 GEMM with float32 accumulation and output (AMX / AVX512-BF16 where the CPU has them).
// LP64 interface; the enums are CBLAS's (CblasRowMajor 101, CblasNoTrans 111, CblasTrans 112).
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta, float* c,
                                       int ldc) __attribute__((weak));

// MKL's per-thread thread count. Our kernels parallelise over blocks themselves; without this
// MKL also spawns threads inside every GEMM of every worker and oversubscribes the cores.
extern "C" int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATTNSTEER_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ATTNSTEER_CLONES
#endif

namespace attnsteer::cpu {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// GCC vector extensions: 16 lanes, lowered to zmm / 2x ymm / 4x xmm by each target clone.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

__attribute__((always_inline)) inline vf splat(float a) { return vf{} + a; }
__attribute__((always_inline)) inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
// Partial load of n < 16 lanes, the rest filled with `fill`.
__attribute__((always_inline)) inline vf load_tail(const float* p, int64_t n, float fill) {
  alignas(64) float buf[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) buf[j] = j < n ? p[j] : fill;
  return load(buf);
}
__attribute__((always_inline)) inline void store_tail(float* p, vf v, int64_t n) {
  alignas(64) float buf[kLanes];
  store(buf, v);
  for (int64_t j = 0; j < n; ++j) p[j] = buf[j];
}
__attribute__((always_inline)) inline float hsum(vf v) {
  float s = 0.f;
  for (int j = 0; j < kLanes; ++j) s += v[j];
  return s;
}
__attribute__((always_inline)) inline float hmax(vf v) {
  float m = kNegInf;
  for (int j = 0; j < kLanes; ++j) m = v[j] > m ? v[j] : m;
  return m;
}

// Cephes-style expf: range reduction by ln2 and a degree-6 polynomial (about 2 ulp).
// exp(x) = 0 below -87.3, including -inf, which masked keys rely on.
__attribute__((always_inline)) inline vf vexp(vf x) {
  const vf hi = splat(88.3762626647949f), lo = splat(-87.3365447505531f);
  vf xl = x > hi ? hi : x;
  xl = xl < lo ? lo : xl;
  const vf t = xl * 1.44269504088896341f + 0.5f;
  const vf tr = __builtin_convertvector(__builtin_convertvector(t, vi), vf);
  const vf fx = tr > t ? tr - 1.0f : tr;  // floor(t)
  vf r = xl - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(fx, vi) + 127) << 23;
  const vf out = y * reinterpret_cast<const vf&>(bits);
  return x < lo ? splat(0.f) : out;
}
}  // namespace

ATTNSTEER_CLONES float row_max(const float* s, int64_t n) {
  vf m = splat(kNegInf);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vf x = load(s + j);
    m = x > m ? x : m;
  }
  if (j < n) {
    const vf x = load_tail(s + j, n - j, kNegInf);
    m = x > m ? x : m;
  }
  return hmax(m);
}

ATTNSTEER_CLONES float exp_sub_sum(float* s, int64_t n, float m) {
  vf sum = splat(0.f);
  const vf mv = splat(m);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vf e = vexp(load(s + j) - mv);
    store(s + j, e);
    sum += e;
  }
  if (j < n) {
    const vf e = vexp(load_tail(s + j, n - j, kNegInf) - mv);
    store_tail(s + j, e, n - j);
    sum += e;
  }
  return hsum(sum);
}

ATTNSTEER_CLONES float span_sum(const float* p, const float* span_weights, int64_t n) {
  vf sum = splat(0.f);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vf w = load(span_weights + j);
    sum += w != 0.f ? load(p + j) : splat(0.f);
  }
  float tail = 0.f;
  for (; j < n; ++j) tail += span_weights[j] != 0.f ? p[j] : 0.f;
  return hsum(sum) + tail;
}

ATTNSTEER_CLONES void scale_span(float* s, const float* span_weights, int64_t n, float key_scale) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vf x = load(s + j);
    store(s + j, load(span_weights + j) != 0.f ? x * key_scale : x);
  }
  for (; j < n; ++j) s[j] = span_weights[j] != 0.f ? s[j] * key_scale : s[j];
}

ATTNSTEER_CLONES void add_span_bias(float* s, const float* span_weights, int64_t n, float bias) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store(s + j, load(s + j) + load(span_weights + j) * bias);
  for (; j < n; ++j) s[j] += bias * span_weights[j];
}

void soft_cap(float* s, int64_t n, float cap) {
  const float inv = 1.0f / cap;
  for (int64_t j = 0; j < n; ++j) s[j] = cap * std::tanh(s[j] * inv);
}

void steer_row(float* s, const float* span_weights, int64_t n, float key_scale, float softcap, float bias) {
  if (key_scale != 1.f) scale_span(s, span_weights, n, key_scale);
  if (softcap > 0.f) soft_cap(s, n, softcap);
  if (bias != 0.f) add_span_bias(s, span_weights, n, bias);
}

ATTNSTEER_CLONES void scale_inplace(float* x, int64_t n, float f) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store(x + j, load(x + j) * f);
  for (; j < n; ++j) x[j] *= f;
}

ATTNSTEER_CLONES void axpy(float* y, const float* x, int64_t n, float a) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store(y + j, load(y + j) + load(x + j) * a);
  for (; j < n; ++j) y[j] += a * x[j];
}

void mask_by_span(float* s, const float* span_weights, int64_t n, bool keep_span) {
  for (int64_t j = 0; j < n; ++j) {
    const bool in_span = span_weights[j] != 0.f;
    if (in_span != keep_span) s[j] = kNegInf;
  }
}

ATTNSTEER_CLONES void split_max(const float* s, const float* span_weights, int64_t n, float* m_span, float* m_rest) {
  vf ms = splat(kNegInf), mr = ms;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vf x = load(s + j), ninf = splat(kNegInf);
    const auto in = load(span_weights + j) != 0.f;
    const vf xs = in ? x : ninf, xr = in ? ninf : x;
    ms = xs > ms ? xs : ms;
    mr = xr > mr ? xr : mr;
  }
  float a = hmax(ms), b = hmax(mr);
  for (; j < n; ++j) {
    if (span_weights[j] != 0.f)
      a = s[j] > a ? s[j] : a;
    else
      b = s[j] > b ? s[j] : b;
  }
  *m_span = a;
  *m_rest = b;
}

ATTNSTEER_CLONES void split_exp_sum(float* s, const float* span_weights, int64_t n, float m_span, float m_rest,
                                    float* sum_span, float* sum_rest) {
  vf ss = splat(0.f), sr = ss;
  const vf vs = splat(m_span), vr = splat(m_rest);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const auto in = load(span_weights + j) != 0.f;
    const vf e = vexp(load(s + j) - (in ? vs : vr));
    store(s + j, e);
    ss += in ? e : splat(0.f);
    sr += in ? splat(0.f) : e;
  }
  if (j < n) {
    alignas(64) float w[kLanes] = {};
    for (int64_t t = 0; t < n - j; ++t) w[t] = span_weights[j + t];
    const auto in = load(w) != 0.f;
    const vf e = vexp(load_tail(s + j, n - j, kNegInf) - (in ? vs : vr));
    store_tail(s + j, e, n - j);
    ss += in ? e : splat(0.f);
    sr += in ? splat(0.f) : e;
  }
  *sum_span = hsum(ss);
  *sum_rest = hsum(sr);
}

// Register-blocked micro-kernels behind scores_kt / pv_rows: RB query rows x 4 vectors of
// output columns in accumulators, each loaded K/V vector reused by all RB rows. Inlined into
// each target clone of the callers.
template <int RB>
__attribute__((always_inline)) inline void scores_kt_rows(const float* q, int64_t D, const float* kt, int64_t ldk,
                                                          int64_t n, float* S, int64_t lds) {
  int64_t t = 0;
  for (; t + 4 * kLanes <= n; t += 4 * kLanes) {
    vf a[RB][4];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) a[r][c] = splat(0.f);
    for (int64_t d = 0; d < D; ++d) {
      const float* k = kt + d * ldk + t;
      const vf k0 = load(k), k1 = load(k + kLanes), k2 = load(k + 2 * kLanes), k3 = load(k + 3 * kLanes);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        const vf x = splat(q[r * D + d]);
        a[r][0] += x * k0;
        a[r][1] += x * k1;
        a[r][2] += x * k2;
        a[r][3] += x * k3;
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) store(S + r * lds + t + c * kLanes, a[r][c]);
  }
  for (; t + kLanes <= n; t += kLanes) {
    vf a[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) a[r] = splat(0.f);
    for (int64_t d = 0; d < D; ++d) {
      const vf k = load(kt + d * ldk + t);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) a[r] += splat(q[r * D + d]) * k;
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) store(S + r * lds + t, a[r]);
  }
  for (; t < n; ++t)
    for (int r = 0; r < RB; ++r) {
      float a = 0.f;
      for (int64_t d = 0; d < D; ++d) a += q[r * D + d] * kt[d * ldk + t];
      S[r * lds + t] = a;
    }
}

template <int RB>
__attribute__((always_inline)) inline void pv_rows_block(const float* p, int64_t n, int64_t ldp, const float* v,
                                                         int64_t ldv, int64_t D, float* acc, int64_t ldacc) {
  int64_t d = 0;
  for (; d + 4 * kLanes <= D; d += 4 * kLanes) {
    vf a[RB][4];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) a[r][c] = load(acc + r * ldacc + d + c * kLanes);
    for (int64_t t = 0; t < n; ++t) {
      const float* vt = v + t * ldv + d;
      const vf v0 = load(vt), v1 = load(vt + kLanes), v2 = load(vt + 2 * kLanes), v3 = load(vt + 3 * kLanes);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        const vf w = splat(p[r * ldp + t]);
        a[r][0] += w * v0;
        a[r][1] += w * v1;
        a[r][2] += w * v2;
        a[r][3] += w * v3;
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) store(acc + r * ldacc + d + c * kLanes, a[r][c]);
  }
  for (; d + kLanes <= D; d += kLanes) {
    vf a[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) a[r] = load(acc + r * ldacc + d);
    for (int64_t t = 0; t < n; ++t) {
      const vf x = load(v + t * ldv + d);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) a[r] += splat(p[r * ldp + t]) * x;
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) store(acc + r * ldacc + d, a[r]);
  }
  for (; d < D; ++d)
    for (int r = 0; r < RB; ++r) {
      float a = acc[r * ldacc + d];
      for (int64_t t = 0; t < n; ++t) a += p[r * ldp + t] * v[t * ldv + d];
      acc[r * ldacc + d] = a;
    }
}

// The row-remainder dispatch is written out in each caller: a lambda passed to a shared helper
// is a function of its own that does not inherit the caller's target clone (it compiles for the
// baseline ISA and made the paged op 10-25x slower).
ATTNSTEER_CLONES void scores_kt(const float* q, int64_t rows, int64_t D, const float* kt, int64_t ldk, int64_t n,
                                float* S, int64_t lds) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) scores_kt_rows<4>(q + r * D, D, kt, ldk, n, S + r * lds, lds);
  switch (rows - r) {
    case 3:
      scores_kt_rows<3>(q + r * D, D, kt, ldk, n, S + r * lds, lds);
      break;
    case 2:
      scores_kt_rows<2>(q + r * D, D, kt, ldk, n, S + r * lds, lds);
      break;
    case 1:
      scores_kt_rows<1>(q + r * D, D, kt, ldk, n, S + r * lds, lds);
      break;
    default:
      break;
  }
}

ATTNSTEER_CLONES void pv_rows(const float* p, int64_t rows, int64_t n, int64_t ldp, const float* v, int64_t ldv,
                              int64_t D, float* acc, int64_t ldacc) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) pv_rows_block<4>(p + r * ldp, n, ldp, v, ldv, D, acc + r * ldacc, ldacc);
  switch (rows - r) {
    case 3:
      pv_rows_block<3>(p + r * ldp, n, ldp, v, ldv, D, acc + r * ldacc, ldacc);
      break;
    case 2:
      pv_rows_block<2>(p + r * ldp, n, ldp, v, ldv, D, acc + r * ldacc, ldacc);
      break;
    case 1:
      pv_rows_block<1>(p + r * ldp, n, ldp, v, ldv, D, acc + r * ldacc, ldacc);
      break;
    default:
      break;
  }
}

SequentialBlas::SequentialBlas() {
  if (MKL_Set_Num_Threads_Local != nullptr) previous_ = MKL_Set_Num_Threads_Local(1);
}
SequentialBlas::~SequentialBlas() {
  if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
}

void gemm_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) {
      if (beta == 0.f)
        std::memset(C + i * ldc, 0, sizeof(float) * N);
      else
        scale_inplace(C + i * ldc, N, beta);
    }
    return;
  }
  if (sgemm_ != nullptr) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    const char ta = trans_b ? 'T' : 'N';
    const char tb = trans_a ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor a = trans_a ? at::from_blob(const_cast<float*>(A), {K, M}, {lda, 1}, opts).t()
                         : at::from_blob(const_cast<float*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = trans_b ? at::from_blob(const_cast<float*>(B), {N, K}, {ldb, 1}, opts).t()
                         : at::from_blob(const_cast<float*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == 0.f) c.zero_();
  at::addmm_out(c, c, a, b, beta == 0.f ? 1.f : beta, alpha);
}

namespace {
inline float bf16_to_float(uint16_t x) {
  uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
}  // namespace

ATTNSTEER_CLONES void float_to_bf16_pair(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, x + j, sizeof(u));
    const uint32_t h = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & 0xffffu;
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    hi[j] = static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : h);
    uint32_t hu = static_cast<uint32_t>(hi[j]) << 16;
    float hf;
    std::memcpy(&hf, &hu, sizeof(hf));
    const float r = x[j] - hf;  // exact: the rounding error of hi fits a float
    uint32_t ru;
    std::memcpy(&ru, &r, sizeof(ru));
    const uint32_t l = ((ru + 0x7fffu + ((ru >> 16) & 1u)) >> 16) & 0xffffu;
    lo[j] = static_cast<uint16_t>(nan ? hi[j] : l);
  }
}

bool has_bf16_gemm() {
  // ATTNSTEER_CPU_BF16_GEMM=0 turns it off (read once): the widening path, for tests and for comparison.
  static const bool on = [] {
    const char* e = std::getenv("ATTNSTEER_CPU_BF16_GEMM");
    return cblas_gemm_bf16bf16f32 != nullptr && !(e != nullptr && std::string(e) == "0");
  }();
  return on;
}

void gemm_bf16_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                        int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K > 0 && has_bf16_gemm()) {
    cblas_gemm_bf16bf16f32(101, trans_a ? 112 : 111, trans_b ? 112 : 111, static_cast<int>(M), static_cast<int>(N),
                           static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C,
                           static_cast<int>(ldc));
    return;
  }
  // No bfloat16 GEMM in this torch's BLAS: widen both operands (dense copies) and use the float one.
  const int64_t ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
  std::vector<float> a(ar * ac), b(br * bc);
  for (int64_t i = 0; i < ar; ++i)
    for (int64_t j = 0; j < ac; ++j) a[i * ac + j] = bf16_to_float(A[i * lda + j]);
  for (int64_t i = 0; i < br; ++i)
    for (int64_t j = 0; j < bc; ++j) b[i * bc + j] = bf16_to_float(B[i * ldb + j]);
  gemm_rowmajor(trans_a, trans_b, M, N, K, alpha, a.data(), ac, b.data(), bc, beta, C, ldc);
}

}  // namespace attnsteer::cpu
