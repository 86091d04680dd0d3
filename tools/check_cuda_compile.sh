#!/usr/bin/env bash
# CUDA compile check without a GPU: compile csrc/cuda/*.cu (and the shared headers they include)
# with nvcc against the headers of a CUDA build of torch, object files only (nothing is linked
# or run). The headers are unpacked from a torch wheel whose CUDA major version must match nvcc's.
#   tools/check_cuda_compile.sh [torch-wheel]      (default: $TORCH_CUDA_WHEEL, else the wheel on this disk)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL="${1:-${TORCH_CUDA_WHEEL:-$(ls /opt/pypi-more/files/torch-2.14.1-*.whl 2>/dev/null | head -1)}}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
OUT=build/cuda-check
# Without the toolchain the check is skipped aloud (exit 0), unless ATTNSTEER_REQUIRE_CUDA_CHECK=1.
missing() {
  echo "check_cuda_compile: SKIPPED — $1" >&2
  [ "${ATTNSTEER_REQUIRE_CUDA_CHECK:-0}" = 1 ] && exit 2
  exit 0
}
[ -f "$WHEEL" ] || missing "no CUDA torch wheel found; pass its path (or set TORCH_CUDA_WHEEL)"
[ -x "$NVCC" ] || missing "nvcc not found; install the CUDA toolkit or set NVCC=/path/to/nvcc"
mkdir -p "$OUT"
if [ ! -f "$OUT/headers.stamp" ] || [ "$(cat "$OUT/headers.stamp")" != "$WHEEL" ]; then
  rm -rf "$OUT/torch"
  unzip -q -o "$WHEEL" 'torch/include/*' 'torch/version.py' -d "$OUT"
  echo "$WHEEL" > "$OUT/headers.stamp"
fi
torch_cuda=$(sed -n "s/^cuda: Optional\[str\] = '\([0-9.]*\)'/\1/p" "$OUT/torch/version.py")
nvcc_cuda=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
if [ "${torch_cuda%%.*}" != "${nvcc_cuda%%.*}" ]; then
  echo "check_cuda_compile: torch was built with CUDA $torch_cuda but nvcc is CUDA $nvcc_cuda; use a matching pair" >&2
  exit 2
fi
INC="$OUT/torch/include"
PYINC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
status=0
for cu in csrc/cuda/*.cu; do
  obj="$OUT/$(basename "$cu" .cu).o"
  echo "nvcc $cu (torch CUDA $torch_cuda, nvcc $nvcc_cuda)"
  "$NVCC" -c "$cu" -o "$obj" -std=c++20 -O1 -DATTNSTEER_WITH_CUDA --use_fast_math \
    -I"$INC" -I"$INC/torch/csrc/api/include" -I"$PYINC" \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1 \
    -gencode arch=compute_90,code=sm_90 -Xcompiler -fPIC || status=1
done
[ $status -eq 0 ] && echo "CUDA compile check: ok ($(ls csrc/cuda/*.cu | wc -l) files)"
exit $status
