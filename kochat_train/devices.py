"""Where a stage runs and in which precision: the device, bf16 autocast, and the dtypes of trained and frozen weights."""

from __future__ import annotations

import torch

from kochat_data.errors import UsageError
from kochat_train.config import TrainConfig
from kochat_train.sources import inference_dtype


def resolve_device(requested: str) -> str:
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return next(device for device, present in available.items() if present)
    if not available[requested]:
        raise UsageError(f"device {requested!r} is not available on this machine (try --device auto)")
    return requested


def uses_bf16(config: TrainConfig, device: str) -> bool:
    """bf16 autocast (weights stay fp32): asked for; by default on a CUDA GPU that has bf16, and on a CPU that
    computes bf16 natively in the stages where it measured as fp32 does (`cpu_bf16_by_default`)."""
    if config.precision != "auto":
        return config.precision == "bf16"
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and config.cpu_bf16_by_default and cpu_has_native_bf16()


def trained_dtype(config: TrainConfig) -> torch.dtype:
    """The dtype trained weights load in (`--weights`); bf16 where the device has no native bf16 is refused."""
    if config.weights == "fp32":
        return torch.float32
    device = resolve_device(config.device)
    if not ((device == "cuda" and torch.cuda.is_bf16_supported()) or (device == "cpu" and cpu_has_native_bf16())):
        raise UsageError(f"--weights bf16: the {device} here has no native bf16 (it would be emulated, slower than fp32); use --weights fp32")
    return torch.bfloat16


def frozen_dtype(config: TrainConfig, device: str) -> torch.dtype:
    """The frozen reference: bf16 with bf16 weights, or on a CUDA GPU with bf16 (`inference_dtype`); else fp32."""
    return torch.bfloat16 if trained_dtype(config) == torch.bfloat16 else inference_dtype(device)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls ~2× fp32's. Elsewhere bf16 is emulated and slower than fp32.
    torch answers only through private helpers, so a torch without them counts as no."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)
