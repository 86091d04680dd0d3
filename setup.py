"""Build of the attnsteer C++/CUDA extension (`attnsteer._C`).

Build against the torch that is installed: ``pip install --no-build-isolation -e .``

Environment switches:
  ATTNSTEER_BUILD_CUDA=auto|0|1   CUDA kernels: auto = when torch has CUDA and nvcc is found
                                  (default); 0 = never; 1 = required (fails otherwise).
  ATTNSTEER_SKIP_EXTENSION=1      build no extension at all (pure-PyTorch fallback only).
  ATTNSTEER_SANITIZE=1            AddressSanitizer + UndefinedBehaviorSanitizer build (-O1 -g), for
                                  `make test-asan`; never for a wheel.
  MAX_JOBS=N                      parallel compile jobs (torch.utils.cpp_extension).
  CC/CXX, ccache                  used as given: `CXX="ccache g++"` reuses earlier builds.
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch) -> bool:
    mode = os.environ.get("ATTNSTEER_BUILD_CUDA", "auto").lower()
    has_cuda_torch = torch.version.cuda is not None
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on"):
        if not (has_cuda_torch and nvcc):
            raise RuntimeError(
                "ATTNSTEER_BUILD_CUDA=1 but "
                + ("the installed torch has no CUDA" if not has_cuda_torch else "nvcc was not found")
                + "; install a CUDA build of torch and the CUDA toolkit, or set ATTNSTEER_BUILD_CUDA=auto."
            )
        return True
    return has_cuda_torch and nvcc


def _extensions():
    if os.environ.get("ATTNSTEER_SKIP_EXTENSION", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is header-inline and only runs in parallel when we compile
    # with OpenMP (the libgomp that torch loads is reused).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", f'-DATTNSTEER_TORCH_VERSION="{torch.__version__}"']
    link = ["-fopenmp"]
    if os.environ.get("ATTNSTEER_SANITIZE", "0") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        cxx = [f for f in cxx if f != "-O3"] + ["-O1", "-g"] + san
        link += san
    if _want_cuda(torch):
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension(
            "attnsteer._C",
            sources,
            extra_link_args=link,
            extra_compile_args={
                "cxx": cxx + ["-DATTNSTEER_WITH_CUDA"],
                "nvcc": ["-O3", "-DATTNSTEER_WITH_CUDA", "--use_fast_math"],
            },
        )
    else:
        ext = CppExtension("attnsteer._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
