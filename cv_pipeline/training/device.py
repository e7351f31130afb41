"""Which device training runs on, with what precision and memory: a plain function, Dagster-free.

The Dagster ``GPUResource`` wraps ``detect_device``; tests and benchmarks call it directly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class DeviceInfo:
    """What the trainer needs to know about the machine it runs on."""

    device: Literal["cuda", "cpu"]
    name: str
    total_memory_gb: float
    bf16: bool
    # 4-bit QLoRA needs both CUDA and bitsandbytes; on a CPU Unsloth falls back to fp32 LoRA.
    four_bit_available: bool
    max_memory_gb: float | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return 0.0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


def cuda_has_native_bf16() -> bool:
    """Whether the GPU computes in bf16 (compute capability 8.0 and up: Ampere, Hopper, ...).

    torch.cuda.is_bf16_supported() also says yes on a T4 or a V100, where bf16 is only emulated: Unsloth then
    loads the model in float16 and refuses a bf16 trainer, and emulated arithmetic would be slow anyway.
    """
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        return torch.cuda.get_device_capability(0)[0] >= 8


def detect_device(prefer: str = "auto", max_memory_gb: float | None = None) -> DeviceInfo:
    """Pick the training device.

    ``prefer``: "auto" (CUDA when available, else CPU), "cuda" (error when there is none) or "cpu".
    ``max_memory_gb`` caps what the trainer may use (recorded; on CUDA also applied as a per-process
    memory fraction so that an over-large batch fails fast instead of starving a neighbour).
    """
    if prefer not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device preference {prefer!r} is not one of 'auto', 'cuda', 'cpu'")
    if max_memory_gb is not None and max_memory_gb <= 0:
        raise ValueError(f"max_memory_gb must be positive, got {max_memory_gb}")
    has_cuda = torch.cuda.is_available()
    if prefer == "cuda" and not has_cuda:
        raise RuntimeError(
            "device 'cuda' was requested but torch sees no CUDA GPU: set the device to 'auto' or 'cpu' "
            "(CPU training uses plain fp32 LoRA), or check the driver / CUDA_VISIBLE_DEVICES"
        )
    if has_cuda and prefer != "cpu":
        props = torch.cuda.get_device_properties(0)
        total = props.total_memory / 1024**3
        if max_memory_gb is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, max_memory_gb / total), 0)
        return DeviceInfo(
            device="cuda",
            name=props.name,
            total_memory_gb=round(total, 2),
            bf16=cuda_has_native_bf16(),
            four_bit_available=importlib.util.find_spec("bitsandbytes") is not None,
            max_memory_gb=max_memory_gb,
        )
    return DeviceInfo(
        device="cpu",
        name=_cpu_name(),
        total_memory_gb=round(_cpu_memory_gb(), 2),
        bf16=False,  # CPU bf16 autocast exists but is slower than fp32 on most CPUs; Unsloth uses fp32
        four_bit_available=False,
        max_memory_gb=max_memory_gb,
    )
