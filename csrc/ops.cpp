// Operator schemas of the attnsteer namespace and the pybind11 `_C` module (build facts).
// Kernels live in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA), registered per device.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "cpu/row_ops.h"

TORCH_LIBRARY(attnsteer, m) {
  // Fused split-softmax attention. Per-head/per-row arguments arrive as (B, Hq) float tensors;
  // ops.py normalises Python scalars into them. Returns (out (B,Hq,Tq,D), span_mass (B,Hq,Tq) or
  // an empty tensor when return_span_mass is False).
  m.def(
      "steered_attention(Tensor q, Tensor k, Tensor v, Tensor span_weights, Tensor bias, "
      "Tensor key_scale, float? target, bool target_exact, Tensor? query_mask, "
      "Tensor? attn_mask, bool is_causal, int? window, float? softcap, float scale, "
      "bool return_span_mass) -> (Tensor, Tensor)");
  m.def(
      "span_bias(Tensor span_weights, Tensor bias, Tensor? query_mask, int num_queries, "
      "ScalarType dtype) -> Tensor");
  m.def(
      "steered_softmax(Tensor logits, Tensor span_weights, Tensor bias, Tensor key_scale, "
      "float? target, bool target_exact, Tensor? query_mask, Tensor? attn_mask, "
      "bool is_causal, int? window, float? softcap) -> Tensor");
  m.def("scale_keys_(Tensor(a!) keys, Tensor span_weights, Tensor factor) -> ()");
  // Low-rank edit of span rows in place (SEKA / PRISM-Delta key and value editing): for every
  // row (b, h, t) with span_weights[b, t] != 0, x += w * a[h] @ (b[h]^T @ x); a, b (H, D, R).
  m.def("lowrank_edit_(Tensor(a!) x, Tensor span_weights, Tensor a, Tensor b) -> ()");
  // The fused op over a paged KV cache (vLLM's layout): packed query tokens (N, Hq, D) of R
  // requests, per-request span weights (R, S) and bias / key_scale (R, Hq); causal by position.
  m.def(
      "steered_attention_paged(Tensor q, Tensor key_cache, Tensor value_cache, bool k_transposed, "
      "Tensor block_table, Tensor seq_lens, Tensor query_start_loc, Tensor span_weights, Tensor bias, "
      "Tensor key_scale, float? target, bool target_exact, Tensor? query_mask, int? window, float? softcap, "
      "float scale, bool return_span_mass) -> (Tensor, Tensor)");
}

namespace {
bool built_with_cuda() {
#ifdef ATTNSTEER_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "attnsteer compiled kernels; importing this module registers torch.ops.attnsteer.*";
  mod.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in.");
  mod.def("cpu_bf16_gemm", &attnsteer::cpu::has_bf16_gemm,
          "True when the CPU kernel multiplies bfloat16 q/k/v with the BLAS's bfloat16 GEMM (MKL: AMX, "
          "AVX512-BF16); False: it widens each block to float32 (no such GEMM, or ATTNSTEER_CPU_BF16_GEMM=0).");
  mod.attr("torch_version") = ATTNSTEER_TORCH_VERSION;
#if defined(__GNUC__) && !defined(__clang__)
  mod.attr("compiler") = std::string("gcc ") + __VERSION__;
#else
  mod.attr("compiler") = std::string("unknown");
#endif
}
