"""The host-sync recorder itself: each construct that blocks the host on CUDA is caught, and
the everyday device-side ones are not (the step tests rely on both)."""

import pytest
import torch

from clipasso_pl.syncs import SyncRecorder, host_side


def reasons(fn) -> list[str]:
    x = torch.rand(6)
    with SyncRecorder() as rec:
        fn(x)
    return [r for r, _, _ in rec.current.syncs]


@pytest.mark.parametrize("fn, reason", [
    (lambda x: x.sum().item(), "_local_scalar_dense"),
    (lambda x: float(x.max()), "_local_scalar_dense"),
    (lambda x: bool((x > 2).any()), "_local_scalar_dense"),
    (lambda x: (x > 0.5).nonzero(), "nonzero"),
    (lambda x: torch.argwhere(x > 0.5), "nonzero"),  # argwhere reaches the dispatcher as nonzero
    (lambda x: x[x > 0.5], "boolean-mask indexing"),
    (lambda x: x.masked_select(x > 0.5), "masked_select"),
    (lambda x: torch.unique(x), "_unique2"),
    (lambda x: torch.repeat_interleave(x, torch.full((6,), 2)), "repeat_interleave without output_size"),
    (lambda x: x.new_tensor([0.5, 0.25]), "tensor from Python data"),
    (lambda x: x.__setitem__(1, 3.0), "tensor from Python data"),
])
def test_each_host_sync_is_caught(fn, reason):
    assert any(r.startswith(reason) for r in reasons(fn)), reasons(fn)


@pytest.mark.parametrize("fn", [
    lambda x: x * 2.0 + 1,
    lambda x: torch.where(x > 0.5, 3.0, x),
    lambda x: torch.repeat_interleave(x, torch.full((6,), 2), output_size=12),
    lambda x: x[torch.arange(2)],
    lambda x: torch.full((2,), 7, dtype=torch.long),
    lambda x: x.clamp(0, 1).sum(),
])
def test_device_side_ops_are_not_syncs(fn):
    assert reasons(fn) == []


def test_host_side_work_is_not_recorded():
    g = torch.Generator().manual_seed(0)

    def draw(x):
        with host_side():
            n = int(torch.randint(0, 10, (1,), generator=g).item())
        return x * n

    assert reasons(draw) == []


def test_kernels_leave_out_views():
    x = torch.rand(4, 4)
    with SyncRecorder() as rec:
        x.t().contiguous()
    assert rec.current.ops == 2 and rec.current.kernels == 1
