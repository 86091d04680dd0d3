#!/usr/bin/env bash
# Compile the CUDA kernels with nvcc against a CUDA build of torch's headers, without a GPU and
# without importing torch (its CUDA libraries need not be installed). Used on the CPU build
# machine, where the CPU torch cannot build the CUDA extension.
#   tools/cuda_compile_check.sh /path/to/site-packages/torch [sm arch, default 90]
set -euo pipefail
TORCH_DIR=${1:?usage: $0 /path/to/site-packages/torch [arch]}
ARCH=${2:-90}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
PYINC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
cd "$(dirname "$0")/.."
OUT=$(mktemp -d)
for f in csrc/cuda/*.cu; do
  echo "nvcc $f (sm_$ARCH)"
  "$NVCC" -c "$f" -o "$OUT/$(basename "$f").o" -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include" \
    -I"$PYINC" -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1 -DATTNSTEER_WITH_CUDA -O3 --use_fast_math \
    -std=c++20 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    -gencode "arch=compute_$ARCH,code=sm_$ARCH" -Xcompiler -fPIC
done
echo "CUDA sources compile (objects in $OUT)"
