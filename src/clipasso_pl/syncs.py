"""Which ops of a training step would make the host wait for a GPU: a dispatch-level recorder.

A CUDA step that never waits for the host can be queued ahead and captured as a CUDA graph.
The ops below block the host on CUDA (they read a device value, or size their output from
one), so a step that runs none of them is sync-free. The recorder sees every aten op as it is
dispatched, on any device, so the CPU test suite can prove a step sync-free without a GPU:

- ``_local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``, ``tolist``;
- ``is_nonzero``, ``equal``: a Python bool from a tensor;
- ``nonzero``, ``argwhere``, ``masked_select``, ``unique*``, ``bincount``: data-sized outputs;
- ``index``/``index_put_`` with a boolean mask (a ``nonzero`` inside);
- ``repeat_interleave`` of a tensor of counts without ``output_size``;
- ``lift_fresh``: a tensor made from Python data (``torch.tensor([...])``, ``new_tensor``,
  ``t[i] = 3``), which on a GPU is a blocking copy from pageable host memory.

Host work on CPU tensors that never touch the device (the per-seed generators' draws) is
allowed inside ``host_side()``; the recorder skips what runs there. Outside a recorder,
``host_side()`` costs one context-variable write.

The recorder also counts ops per step: ``kernels`` leaves out views and aliases, so on a GPU
it is about the number of kernel launches of the step.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from .accel import HOST_SIDE, host_side  # noqa: F401  (host_side: re-exported for the tests)

aten = torch.ops.aten

# Ops that read a device value on the host or size their output from one.
SYNC_OPS = frozenset({
    aten._local_scalar_dense.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.nonzero.out,
    aten.argwhere.default,
    aten.masked_select.default,
    aten.bincount.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.unique_dim_consecutive.default,
})
# A tensor made from Python data: a blocking host-to-device copy on a GPU.
PYTHON_DATA_OPS = frozenset({aten.lift_fresh.default, aten.lift_fresh_copy.default})
# Ops that launch no kernel (metadata only).
NO_KERNEL_OPS = frozenset({aten.detach.default, aten.alias.default, aten.lift_fresh.default})

_PACKAGE = str(Path(__file__).resolve().parent)


def sync_reason(func, args: tuple, kwargs: dict) -> str | None:
    """Why ``func(*args, **kwargs)`` would block the host on CUDA, or None."""
    if func in SYNC_OPS:
        return func.__name__
    if func in PYTHON_DATA_OPS:
        return "tensor from Python data"
    packet = func.overloadpacket
    if packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean-mask indexing"
    if packet is aten.repeat_interleave and isinstance(args[0] if args else None, Tensor):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        counted = func is aten.repeat_interleave.Tensor or isinstance(repeats, Tensor)
        if counted and kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None):
            return "repeat_interleave without output_size"
    return None


def _where() -> str:
    """The innermost frame of this package that led to the op (file:line function)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("syncs.py"):
            return f"{Path(frame.filename).relative_to(_PACKAGE)}:{frame.lineno} {frame.name}"
    frame = traceback.extract_stack()[-4]
    return f"{frame.filename}:{frame.lineno} {frame.name}"


def _progress_bar_read() -> bool:
    """Whether the op runs inside Lightning's progress-bar metrics, which call ``.item()`` on every
    value logged with ``prog_bar=True`` at every step. The package logs only CPU tensors there (the
    last eval loss, see ``LayerLossLogger``), so on CUDA that is a host read, not a sync; the CUDA
    sync-debug test checks it on a GPU."""
    return any(frame.name == "metrics" and 'metrics["pbar"]' in (frame.line or "") and "lightning" in frame.filename
               for frame in traceback.extract_stack())


@dataclass
class StepRecord:
    """What one training step dispatched: ``syncs`` are ``(reason, op, where)``; ``host_reads``
    counts the progress bar's reads of its host values (not syncs)."""

    step: int
    ops: int = 0
    kernels: int = 0
    syncs: list[tuple[str, str, str]] = field(default_factory=list)
    host_reads: int = 0


class SyncRecorder(TorchDispatchMode):
    """Record every aten op dispatched while active into ``self.current`` (a StepRecord)."""

    def __init__(self):
        super().__init__()
        self.current = StepRecord(step=-1)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not HOST_SIDE.get():
            record = self.current
            record.ops += 1
            if func not in NO_KERNEL_OPS and not func.is_view:
                record.kernels += 1
            reason = sync_reason(func, args, kwargs)
            if reason is not None:
                if func is aten._local_scalar_dense.default and _progress_bar_read():
                    record.host_reads += 1
                else:
                    record.syncs.append((reason, str(func), _where()))
        return func(*args, **kwargs)


class SyncRecorderCallback(pl.Callback):
    """Records each training step, from one batch start to the next (Lightning's loop, the
    step, the backward, the optimiser, every callback and logger in between), into ``records``.

    Put it first in the callback list. Steps are numbered by ``global_step`` at their start.
    """

    def __init__(self):
        self.records: list[StepRecord] = []
        self._mode: SyncRecorder | None = None

    def _close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.records.append(self._mode.current)
            self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close()
        self._mode = SyncRecorder()
        self._mode.current.step = int(trainer.global_step)
        self._mode.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()
