"""Where a model runs: the engine (fused CPU kernels or torch) and device, and the
number of threads the CPU kernels use."""

from __future__ import annotations

import os

import re

from fmctr.errors import BadOptions

ENGINES = ("auto", "cpu", "torch")


def known_device(device: str) -> bool:
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", device) is not None


def _torch():
    try:
        import torch
    except ImportError:
        raise BadOptions("the torch engine needs PyTorch: pip install 'fmctr[torch]'") from None
    return torch


def _maybe_cuda() -> bool:
    """Whether an NVIDIA driver is present, without importing torch (1-2 s) to ask."""
    return os.path.exists("/proc/driver/nvidia/version") or os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "")


def resolve_device(engine: str, device: str) -> tuple[str, str]:
    """'auto' picks the fused CPU engine on a CPU and the torch engine on CUDA."""
    if not known_device(device):
        raise BadOptions(f"unknown device {device!r} (choose from auto, cpu, cuda, cuda:N)")
    if device == "auto":
        device = "cpu"
        if engine != "cpu" and (engine == "torch" or _maybe_cuda()):
            try:
                import torch

                if torch.cuda.is_available():
                    device = "cuda"
            except ImportError:
                pass
    if engine == "auto":
        engine = "cpu" if device == "cpu" else "torch"
    if engine == "cpu" and device != "cpu":
        raise BadOptions(f"--engine cpu runs on the CPU only; use --engine torch for --device {device}")
    if engine not in ("cpu", "torch"):
        raise BadOptions(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if engine == "torch" and device != "cpu" and not _torch().cuda.is_available():
        raise BadOptions(f"--device {device}: CUDA is not available on this machine")
    if engine == "torch":
        _torch()
    return engine, device



def set_threads(threads: int | None) -> int:
    """Use `threads` (default: every core) in the numba kernels; returns the number."""
    import numba

    n = min(threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n

