"""The hardware-dependent choices of training, each a small function so a CPU test can check
what it decides on a GPU: the compute dtype, autocast, the AdamW kernel, the accelerator."""

from __future__ import annotations

import contextlib

from tinystories.train.args import TrainArgs

ADAMW_BETAS = (0.9, 0.95)


def choose_dtype(requested: str, bf16_supported: bool) -> str:
    """The compute dtype: `auto` is bf16 where the hardware has native bf16, fp32 otherwise."""
    if requested == "auto":
        return "bf16" if bf16_supported else "fp32"
    return requested


def bf16_supported(device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Without native bf16 (AVX512-BF16/AMX) the casts cost more than the GEMMs save.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_context(dtype: str, device_type: str):
    """A context factory: bf16 autocast on `device_type` for dtype bf16, nothing for fp32."""
    import torch

    if dtype == "bf16":
        return lambda: torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def adamw_implementation(device_type: str) -> dict:
    """AdamW's kernel choice: the fused kernel where PyTorch has one (CUDA, CPU), else foreach."""
    return {"fused": True} if device_type in ("cuda", "cpu") else {"foreach": True}


def make_optimizer(model, args: TrainArgs, device_type: str):
    import torch

    from tinystories.train.model import param_groups

    def adamw(impl: dict):
        return torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=ADAMW_BETAS, eps=1e-8, **impl)

    try:
        return adamw(adamw_implementation(device_type))
    except (RuntimeError, TypeError):  # a build without the fused kernel for this device
        return adamw({"foreach": True})


def has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def process_state():
    """accelerate's process state. On a CPU-only machine accelerate only treats a torchrun/mpirun
    launch as multi-process (gloo) when asked for cpu=True, so ask for it exactly then."""
    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator())
