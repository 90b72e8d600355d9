"""Speed switches of the GPU path, all off by default (the official code runs plain float32).

``precision`` is Lightning's (``32-true`` or ``bf16-mixed``: the CLIP forward/backward in
bfloat16 under autocast, the renderer, augmentation and loss in float32, see
``SketchModule.full_precision``); ``tf32`` and ``cudnn_benchmark`` are process-wide backend
flags set here; ``channels_last`` and ``compile_clip`` change the CLIP tower
(``ClipFeatures.speed``). On a CPU, tf32 and cudnn_benchmark change nothing.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from omegaconf import DictConfig

from .errors import ClipassoError

def set_backend_flags(tf32: bool | None = None, cudnn_benchmark: bool = False) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions (None: PyTorch's defaults, i.e. matmul
    float32 and cuDNN convolutions TF32), and cuDNN autotuning. Process-wide.

    Only the legacy API (``set_float32_matmul_precision``, ``cudnn.allow_tf32``): Lightning's CUDA
    setup reads ``torch.get_float32_matmul_precision()``, which raises once the newer
    ``fp32_precision`` API has also been used. Setting the legacy flags clears such a mix, and the
    read at the end fails here, in every run, not only in the first one Lightning checks
    (it checks once per process).
    """
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # "high": TF32 matmuls
    torch.backends.cudnn.allow_tf32 = True if tf32 is None else bool(tf32)
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    torch.get_float32_matmul_precision()


def apply_speed_config(cfg: DictConfig, clip) -> None:
    """Set the backend flags and the CLIP tower's switches of a sketch config."""
    compile_clip = cfg.compile_clip
    if not isinstance(compile_clip, bool):  # the schema checked the type; the backend names need torch
        import torch._dynamo

        if str(compile_clip) not in torch._dynamo.list_backends(exclude_tags=()):
            raise ClipassoError(f"compile_clip={compile_clip}: use true, false or a torch.compile backend "
                                f"({', '.join(torch._dynamo.list_backends())})")
    set_backend_flags(cfg.tf32, bool(cfg.cudnn_benchmark))
    clip.speed(channels_last=bool(cfg.channels_last), compile=compile_clip)


# True inside host_side(): the sync recorder (syncs.py) skips what runs there.
HOST_SIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("clipasso_pl_host_side", default=False)


@contextlib.contextmanager
def host_side():
    """Mark host-only work on CPU tensors that never touch the device (draws from the per-seed CPU
    generators, reading them): not a device sync. Costs one context-variable write."""
    token = HOST_SIDE.set(True)
    try:
        yield
    finally:
        HOST_SIDE.reset(token)


def host_to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy a tensor made on the host (e.g. drawn from a per-seed CPU generator) to ``device``.

    To a GPU the copy goes through pinned memory without blocking: a copy from pageable memory
    would wait for the GPU's queue to drain (a host sync every step).
    """
    t = t if dtype is None else t.to(dtype)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (timing boundaries only; a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepCompiler:
    """``compile=step``: a step function compiled once with ``fullgraph=True`` when ``backend`` names
    a torch.compile backend (None: eager, the function itself); on CUDA with inductor as CUDA graphs
    (``mode="reduce-overhead"``), which the sync-free step allows."""

    def __init__(self, backend: str | None):
        self.backend = backend
        self.compiled = None

    def __call__(self, fn, device: torch.device):
        """``fn`` as the step runs it on ``device``: compiled on first use (and reused)."""
        if not self.backend:
            return fn
        cuda_graphs = device.type == "cuda" and self.backend == "inductor"
        if self.compiled is None:
            self.compiled = torch.compile(fn, backend=self.backend, fullgraph=True,
                                          dynamic=False, mode="reduce-overhead" if cuda_graphs else None)
        if cuda_graphs:  # the previous step's graph outputs (already consumed) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled
