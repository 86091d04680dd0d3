import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _cuda_ready() -> bool:
    import attnsteer

    return torch.cuda.is_available() and attnsteer.backend("cuda") == "cuda"


# One test body per op, the device as a parameter: CUDA runs the same cases against the same
# float64 reference with the same tolerance rule (skipped without a GPU and a CUDA build).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not _cuda_ready(), reason="needs a GPU and the CUDA kernels")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def to_device(obj, device):
    """Tensors (also inside dicts) moved to ``device``; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj
