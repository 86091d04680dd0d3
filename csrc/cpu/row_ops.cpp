#include "row_ops.h"

#include <ATen/ATen.h>
#include <cmath>
#include <cstring>
#include <limits>

// BLAS from the MKL/OpenBLAS that libtorch_cpu carries. Weak, so that a torch build without
// an exported sgemm_ still loads us; then gemm_rowmajor goes through at::addmm_out.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc) __attribute__((weak));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATTNSTEER_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ATTNSTEER_CLONES
#endif

namespace attnsteer::cpu {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Cephes-style expf: range reduction by ln2 and a degree-6 polynomial, written without
// calls so the compiler vectorises it (about 2 ulp). exp(x) = 0 below -87.3, including -inf,
// which masked keys rely on.
inline float exp_poly(float x) {
  const float xc = x > 88.3762626647949f ? 88.3762626647949f : x;
  const float xl = xc < -87.3365447505531f ? -87.3365447505531f : xc;
  const float fx = __builtin_floorf(xl * 1.44269504088896341f + 0.5f);
  float r = xl - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t n = static_cast<int32_t>(fx) + 127;
  float pow2;
  const int32_t bits = n << 23;
  std::memcpy(&pow2, &bits, sizeof(pow2));
  const float out = y * pow2;
  return x < -87.3365447505531f ? 0.0f : out;
}
}  // namespace

ATTNSTEER_CLONES float row_max(const float* s, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

ATTNSTEER_CLONES float exp_sub_sum(float* s, int64_t n, float m) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_poly(s[j] - m);
    s[j] = e;
    sum += e;
  }
  return sum;
}

ATTNSTEER_CLONES float span_sum(const float* p, const float* span_weights, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += span_weights[j] != 0.f ? p[j] : 0.f;
  return sum;
}

ATTNSTEER_CLONES void scale_span(float* s, const float* span_weights, int64_t n, float key_scale) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] = span_weights[j] != 0.f ? s[j] * key_scale : s[j];
}

ATTNSTEER_CLONES void add_span_bias(float* s, const float* span_weights, int64_t n, float bias) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] += bias * span_weights[j];
}

void soft_cap(float* s, int64_t n, float cap) {
  const float inv = 1.0f / cap;
  for (int64_t j = 0; j < n; ++j) s[j] = cap * std::tanh(s[j] * inv);
}

ATTNSTEER_CLONES void scale_inplace(float* x, int64_t n, float f) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] *= f;
}

ATTNSTEER_CLONES void axpy(float* y, const float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}

ATTNSTEER_CLONES void mask_by_span(float* s, const float* span_weights, int64_t n, bool keep_span) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const bool in_span = span_weights[j] != 0.f;
    s[j] = in_span == keep_span ? s[j] : kNegInf;
  }
}

void gemm_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                   float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) {
      if (beta == 0.f) std::memset(C + i * ldc, 0, sizeof(float) * N);
      else scale_inplace(C + i * ldc, N, beta);
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

}  // namespace attnsteer::cpu
