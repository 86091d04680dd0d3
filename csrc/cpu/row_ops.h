// Row-wise float loops used by the CPU kernels. They live in row_ops.cpp, compiled with
// GCC's target_clones so that one binary carries AVX-512, AVX2+FMA and baseline versions
// and picks one at load time (no -march=native: the wheel must run on any x86-64).
#pragma once
#include <cstdint>

namespace attnsteer::cpu {

// max over s[0:n); -inf for n == 0 or an all -inf row.
float row_max(const float* s, int64_t n);
// s[j] = exp(s[j] - m) in place (exp(-inf) = 0 exactly); returns the sum.
float exp_sub_sum(float* s, int64_t n, float m);
// sum_j p[j] where span_weights[j] != 0.
float span_sum(const float* p, const float* span_weights, int64_t n);
// s[j] *= key_scale where span_weights[j] != 0.
void scale_span(float* s, const float* span_weights, int64_t n, float key_scale);
// s[j] += bias * span_weights[j].
void add_span_bias(float* s, const float* span_weights, int64_t n, float bias);
// The steering part of the logit pipeline over a row (common/row_math.h's steer_logit, vectorised):
// span keys *= key_scale; softcap (cap <= 0: none); += bias * span weight. Pass key_scale 1 and
// bias 0 for an unsteered row.
void steer_row(float* s, const float* span_weights, int64_t n, float key_scale, float softcap, float bias);
// s[j] = cap * tanh(s[j] / cap).
void soft_cap(float* s, int64_t n, float cap);
// x[j] *= f.
void scale_inplace(float* x, int64_t n, float f);
// y[j] = a * x[j] + y[j]
void axpy(float* y, const float* x, int64_t n, float a);
// s[j] = -inf where keep(j) is false: keep_span selects span keys (true) or the rest (false).
void mask_by_span(float* s, const float* span_weights, int64_t n, bool keep_span);

// Maxima of s[0:n) over the span keys (span_weights != 0) and over the rest; -inf for none.
void split_max(const float* s, const float* span_weights, int64_t n, float* m_span, float* m_rest);
// s[j] = exp(s[j] - m) with m = m_span on span keys, m_rest on the others (pass a finite m; a
// channel whose keys are all -inf gives 0s); the sums of each channel.
void split_exp_sum(float* s, const float* span_weights, int64_t n, float m_span, float m_rest, float* sum_span,
                   float* sum_rest);

// Register-blocked products of query rows with one key block of the paged cache, in place of
// BLAS (MKL takes a slow generic path on AMD CPUs, and a call per block costs more than the
// arithmetic of a decode row):
// S[r][t] = sum_d q[r*D + d] * kt[d*ldk + t] for r < rows, t < n — K stored transposed (D x n).
void scores_kt(const float* q, int64_t rows, int64_t D, const float* kt, int64_t ldk, int64_t n, float* S, int64_t lds);
// acc[r*ldacc + d] += sum_t p[r*ldp + t] * v[t*ldv + d] for r < rows, d < D — V row-major (n x D).
void pv_rows(const float* p, int64_t rows, int64_t n, int64_t ldp, const float* v, int64_t ldv, int64_t D, float* acc,
             int64_t ldacc);

// Scope guard: BLAS calls on this thread run single-threaded (restores on exit). Use inside
// at::parallel_for bodies that call gemm_rowmajor.
class SequentialBlas {
 public:
  SequentialBlas();
  ~SequentialBlas();
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_ = 0;
};

// Row-major single-precision GEMM: C(MxN) = alpha * op(A) * op(B) + beta * C.
// op(A) is MxK, op(B) is KxN; lda/ldb/ldc are row strides.
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// bfloat16 as raw bits. x = hi + lo to about 16 significant bits: hi = bf16(x), lo = bf16(x - hi), each
// rounded to nearest even (a NaN goes to both).
void float_to_bf16_pair(const float* x, uint16_t* hi, uint16_t* lo, int64_t n);
// Whether gemm_bf16_rowmajor runs the BLAS's own bfloat16 GEMM (MKL: AMX / AVX512-BF16) rather than
// widening its operands to float32 first (ATTNSTEER_CPU_BF16_GEMM=0 forces the widening).
bool has_bf16_gemm();
// gemm_rowmajor with bfloat16 operands (raw bits) and a float32 C; products accumulate in float32.
void gemm_bf16_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                        int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace attnsteer::cpu
