#!/usr/bin/env bash
# One prepared GPU session (issues 13, 27, 31): build the CUDA extension for this GPU, run every op test
# with device=cuda (the same bodies and tolerance rule as on CPU; the FlexAttention route compiled),
# a compute-sanitizer subset, and the GPU benchmark table with every route as a column. Everything lands
# under $OUT (the device tool brings it back). Each step has a time cap so that the whole run stays
# within about 9 minutes (build ~3, tests <= 3 + 1 + 1, sanitizer <= 1.5, bench <= 2; the model-shaped tests
# take seconds, their cap is a ceiling):
#   OUT=/path tools/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
arch=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}.{b}')")
echo "build for sm_$arch"
TORCH_CUDA_ARCH_LIST=$arch ATTNSTEER_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
  $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import attnsteer; assert attnsteer.backend('cuda') == 'cuda', attnsteer.backend('cuda'); print('backend cuda')"
timeout 180 $PY -m pytest -q -p no:cacheprovider -k cuda tests/test_steered_attention.py tests/test_eager_ops.py \
  tests/test_pieces.py tests/test_flex.py tests/test_key_edit.py > "$OUT/tests.log" 2>&1
tail -3 "$OUT/tests.log"
# the tiny models through the FlexAttention route on the GPU (compiled), against the fused kernel
ATTNSTEER_TEST_DEVICE=cuda timeout 60 $PY -m pytest -q -p no:cacheprovider tests/test_flex.py -k "tiny and (llama or gemma2)" \
  > "$OUT/tests-flex-models.log" 2>&1
tail -1 "$OUT/tests-flex-models.log"
# real-model-shaped: Llama-3-8B / Qwen2.5-0.5B / Gemma-3-1B attention shapes (2 layers), every method through
# steer() against the eager float64 oracle, fp32 and bf16, prompt and cached decode, a left-padded batch
ATTNSTEER_TEST_DEVICE=cuda timeout 60 $PY -m pytest -q -p no:cacheprovider tests/test_model_shapes.py \
  > "$OUT/tests-model-shapes.log" 2>&1
tail -1 "$OUT/tests-model-shapes.log"
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    timeout 45 compute-sanitizer --tool $tool --error-exitcode 1 $PY -m pytest -q -p no:cacheprovider -x \
      -k "cuda and (mask_and_softcap_grid or scale_keys or span_bias or lowrank)" tests/test_steered_attention.py \
      tests/test_eager_ops.py tests/test_key_edit.py > "$OUT/sanitizer-$tool.log" 2>&1
    echo "compute-sanitizer $tool: exit $?"
  done
fi
# every route (auto, pieces, FlexAttention, the fused kernel) against SDPA-flash in one run; the table is
# rewritten after every point, so the time limit keeps what was measured
timeout 120 $PY benchmarks/bench_attention.py --device cuda --out "$OUT" > "$OUT/bench.log" 2>&1
cat "$OUT/bench_attention_cuda.md" 2>/dev/null
