"""The GPU path on the CPU: the full-step benchmark, precision switches, logging cadence, device moves.

The CUDA-only check (same step on cpu and cuda) is skipped without CUDA; the training step's host
syncs are tested in test_syncs_step.py (on the CPU by a recorder, on CUDA under sync-debug mode).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipasso_pl.api import build_module, build_trainer, run_sketch
from clipasso_pl.config import compose
from clipasso_pl.images import load_target, resolve_target
from clipasso_pl.module import step_loader

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
TARGET = "skimage:coffee"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# Stated tolerances of the speed switches against float32 (tiny ResNet, same points and draws):
BF16_TERM_RTOL = 0.02  # bfloat16 keeps 8 bits of mantissa: ~0.5 % per term measured, 2 % allowed
BF16_GRAD_RTOL = 0.10  # ||g_bf16 - g_fp32|| / ||g_fp32||: ~3 % measured
EXACT_RTOL = 1e-4  # channels_last, compile: the same maths in another layout / fused kernels


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "clipasso_pl.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def sketch_cfg(*overrides, **values):
    base = dict(target=TARGET, logger="none", save_interval=0, checkpoint_interval=0)
    base.update(values)
    return compose("sketch", ["preset=smoke", "init=random", "init.pretrained=null", *overrides], **base)


def loss_and_grad(*overrides, autocast: bool = False):
    """Loss terms [S] and the points' gradient of one augmented step at the random init (seeds 0, 1000)."""
    cfg = sketch_cfg(*overrides)
    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    module.initialize()
    region = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with region:  # what Lightning's bf16-mixed plugin puts around training_step
        terms = module.compute_loss(module.render())
    terms["loss"].sum().backward()
    return {k: v.detach() for k, v in terms.items()}, module.points.grad.clone()


@pytest.fixture(scope="module")
def fp32():
    return loss_and_grad()


def rel(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def test_bf16_mixed_gives_fp32_loss_terms_within_tolerance(fp32):
    terms, grad = loss_and_grad("precision=bf16-mixed", autocast=True)
    ref_terms, ref_grad = fp32
    assert set(terms) == set(ref_terms)
    for k in ref_terms:
        assert rel(terms[k], ref_terms[k]) < BF16_TERM_RTOL, k
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < BF16_GRAD_RTOL
    assert terms["loss"].dtype == torch.float32  # the loss itself stays float32


def test_renderer_stays_float32_under_bf16_autocast():
    cfg = sketch_cfg()
    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    module.initialize()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = module.render()
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, module.render(), rtol=0, atol=0)


@pytest.mark.parametrize("override", ["channels_last=true", "compile_clip=aot_eager"])
def test_layout_and_compile_switches_give_fp32_loss_terms(fp32, override):
    # compile_clip=true (inductor) was checked the same way by hand: within 2e-6, but it takes minutes to
    # compile on a 2-core CPU; aot_eager runs the same dynamo capture and autograd graph in seconds.
    terms, grad = loss_and_grad(override)
    ref_terms, ref_grad = fp32
    for k in ref_terms:
        assert rel(terms[k], ref_terms[k]) < EXACT_RTOL, k
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < EXACT_RTOL


def test_backend_flags_are_set_and_restored():
    from clipasso_pl.accel import set_backend_flags

    set_backend_flags(tf32=True, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    set_backend_flags(tf32=False, cudnn_benchmark=False)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.conv.fp32_precision == "ieee"
    set_backend_flags()  # PyTorch's defaults: matmul float32, cuDNN convolutions TF32
    assert torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.conv.fp32_precision == "tf32"


@pytest.mark.parametrize("override, message", [("precision=16-mixed", "precision=16-mixed"),
                                               ("tf32=maybe", "tf32=maybe"),
                                               ("compile_clip=nonsense", "compile_clip=nonsense")])
def test_bad_speed_switch_is_one_line(tmp_path, override, message):
    res = cli("sketch", "preset=smoke", f"target={TARGET}", override, f"hydra.run.dir={tmp_path}")
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr[-2000:]


def test_bf16_run_through_the_trainer(tmp_path):
    result = run_sketch(sketch_cfg("precision=bf16-mixed", steps=4, eval_interval=2, seeds=[0]), tmp_path)
    assert result.best_svg.is_file() and result.summary["steps_run"] == 4


def test_logging_is_buffered_but_every_step_is_logged(tmp_path):
    cfg = sketch_cfg(steps=13, eval_interval=5, logger="csv", seeds=[0, 1000])
    run_sketch(cfg, tmp_path)
    with open(tmp_path / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train = sorted(int(r["step"]) for r in rows if r.get("train/loss"))
    evals = sorted(int(r["step"]) for r in rows if r.get("eval/loss"))
    assert train == list(range(13))  # every step, though read from the device only at evals and the end
    assert evals == [0, 5, 10]  # eval values only where an eval ran
    by_step = {int(r["step"]): r for r in rows if r.get("eval/loss")}
    seeds = [float(by_step[5][f"eval/loss_seed{i}"]) for i in (0, 1)]
    assert abs(float(by_step[5]["eval/loss"]) - sum(seeds) / 2) < 1e-6
    assert all(float(r["time/step_s"]) > 0 for r in rows if r.get("time/step_s"))


def test_bench_smoke_writes_json_and_markdown(tmp_path):
    """`make bench ARGS="preset=smoke"`: every phase measured, bare and trainer loops, fp32 and bf16."""
    out = tmp_path / "step"
    res = cli("bench", "preset=smoke", f"target={TARGET}", f"bench.out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["device"] in ("cpu", "cuda") and report["machine"]["load_average"]
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert set(row["phases_ms"]) == {"render", "augment", "target_forward", "sketch_forward", "backward",
                                         "optimizer", "eval"}
        assert all(v > 0 for v in row["phases_ms"].values())
        assert row["phases_sum_ms"] == pytest.approx(sum(row["phases_ms"].values()))
        assert row["phases_over_step"] > 0  # sum of per-phase medians / median whole step (not asserted: timing)
        for key in ("train_step_median_ms", "bare_step_ms", "trainer_step_ms", "fixed_overhead_ms", "overhead_ms"):
            assert key in row and row[key] == row[key], key  # present and not NaN
    table = out.with_suffix(".md").read_text()
    assert "| tiny-rn | 1 | fp32 |" in table and "fixed overhead" in table


def test_bench_render_keeps_the_renderer_benchmark(tmp_path):
    from clipasso_pl.bench import main

    out = tmp_path / "r.json"
    assert main(["bench=render", "--out", str(out), "--strokes", "4", "--seeds", "1", "--repeats", "1"]) == 0
    assert json.loads(out.read_text())["rows"][0]["strokes"] == 4


def test_bench_refuses_unknown_variant(tmp_path):
    res = cli("bench", "preset=smoke", "bench.run=[fp64]", f"bench.out={tmp_path / 'x'}")
    assert res.returncode == 2 and "fp64" in res.stderr.strip().splitlines()[-1]


def steps_on(device: str, run_dir: Path, steps: int = 3) -> torch.Tensor:
    """Points after ``steps`` Trainer steps on ``device`` (same seed, same draws)."""
    cfg = sketch_cfg(steps=steps, eval_interval=2, seeds=[0, 1000])
    cfg.trainer.accelerator = "gpu" if device == "cuda" else "cpu"
    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    trainer = build_trainer(cfg, run_dir, [])
    trainer.fit(module, train_dataloaders=step_loader(steps))
    assert module.points.device.type == device and module.target.device.type == device
    return module.points.detach().cpu()


@CUDA
def test_same_step_on_cpu_and_cuda(tmp_path):
    torch.testing.assert_close(steps_on("cuda", tmp_path / "cuda"), steps_on("cpu", tmp_path / "cpu"),
                               rtol=1e-3, atol=1e-3)
