"""GPU tests: they run where CUDA exists and skip, saying why, everywhere else.

``MEMESERVE_GPU_MODEL`` may point at a real GLM-4.xV checkpoint directory (for
example GLM-4.6V-Flash); without it the tiny random checkpoint is used, which
exercises the same code paths with meaningless text.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (none here)")
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not cuda_available(),
    reason="needs vllm installed (pip install 'memeserve[gpu]') and a CUDA GPU",
)


@pytest.fixture(scope="session")
def gpu_model_dir(tiny_glm4v_dir: Path) -> Path:
    configured = os.environ.get("MEMESERVE_GPU_MODEL")
    return Path(configured) if configured else tiny_glm4v_dir
