"""The GPU path on the CPU: the full-step benchmark, precision switches, logging cadence, device moves.

The CUDA-only check (same step on cpu and cuda) is skipped without CUDA; the training step's host
syncs are tested in test_syncs_step.py (on the CPU by a recorder, on CUDA under sync-debug mode).
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from clipasso_pl.api import build_module, build_trainer, run_sketch
from clipasso_pl.config import compose
from clipasso_pl.images import resolve_target
from clipasso_pl.sketch_target import load_target
from clipasso_pl.training.steps import step_loader
from cli_runs import ENV, cli

TARGET = "skimage:coffee"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def gpu_only(test):
    """A CUDA test: marked ``gpu`` (``make gpu-check`` runs them all) and skipped without CUDA."""
    return pytest.mark.gpu(CUDA(test))
# Stated tolerances of the speed switches against float32 (tiny ResNet, same points and draws):
BF16_TERM_RTOL = 0.02  # bfloat16 keeps 8 bits of mantissa: ~0.5 % per term measured, 2 % allowed
BF16_GRAD_RTOL = 0.10  # ||g_bf16 - g_fp32|| / ||g_fp32||: ~3 % measured
EXACT_RTOL = 1e-4  # channels_last, compile: the same maths in another layout / fused kernels


def sketch_cfg(*overrides, **values):
    base = dict(target=TARGET, logger="none", save_interval=0, checkpoint_interval=0)
    base.update(values)
    return compose("sketch", ["preset=smoke", "init=random", "init.pretrained=null", *overrides], **base)


def loss_and_grad(*overrides, autocast: bool = False, device: str = "cpu"):
    """Loss terms [S] and the points' gradient of one augmented step at the random init (seeds 0, 1000)."""
    cfg = sketch_cfg(*overrides)
    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    module.initialize()  # drawn on the host: the same strokes on every device
    module.to(device)
    region = torch.autocast(device, dtype=torch.bfloat16) if autocast else torch.autocast(device, enabled=False)
    with region:  # what Lightning's bf16-mixed plugin puts around training_step
        terms = module.compute_loss(module.render())
    terms["loss"].sum().backward()
    return {k: v.detach() for k, v in terms.items()}, module.points.grad.clone()


@pytest.fixture(scope="module")
def fp32():
    return loss_and_grad()


def rel(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("override", ["channels_last=true", "compile_clip=aot_eager"])
def test_layout_and_compile_switches_give_fp32_loss_terms(fp32, override):
    # compile_clip=true (inductor) was checked the same way by hand: within 2e-6, but it takes minutes to
    # compile on a 2-core CPU; aot_eager runs the same dynamo capture and autograd graph in seconds.
    terms, grad = loss_and_grad(override)
    ref_terms, ref_grad = fp32
    for k in ref_terms:
        assert rel(terms[k], ref_terms[k]) < EXACT_RTOL, k
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < EXACT_RTOL


@pytest.fixture
def restore_backend_flags():
    yield
    from clipasso_pl.accel import set_backend_flags

    set_backend_flags()  # process-wide: leave PyTorch's defaults to the next test


def test_backend_flags_are_set_and_restored(restore_backend_flags):
    from clipasso_pl.accel import set_backend_flags

    set_backend_flags(tf32=True, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    set_backend_flags(tf32=False, cudnn_benchmark=False)
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    set_backend_flags()  # PyTorch's defaults: matmul float32, cuDNN convolutions TF32
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32


def lightning_cuda_setup(monkeypatch) -> None:
    """The checks Lightning's CUDA accelerator runs at setup (``setup_device``), believing the device is an
    Ampere GPU (compute capability 8.0), on the CPU. Lightning runs them once per process: here every time."""
    from lightning_fabric.accelerators.cuda import _check_cuda_matmul_precision
    from pytorch_lightning.accelerators import CUDAAccelerator

    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
        m.setattr(torch.cuda, "get_device_name", lambda device=None: "simulated Ampere")
        m.setattr(torch.cuda, "set_device", lambda device: None)
        _check_cuda_matmul_precision.cache_clear()
        try:
            CUDAAccelerator().setup_device(torch.device("cuda", 0))
        finally:
            _check_cuda_matmul_precision.cache_clear()


@pytest.mark.parametrize("benchmark", ["true", "false"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("tf32", ["true", "false", "null"])
def test_every_speed_switch_passes_lightnings_cuda_setup(rn, monkeypatch, restore_backend_flags, tf32, precision,
                                                         benchmark):
    from clipasso_pl.accel import apply_speed_config

    cfg = sketch_cfg(f"tf32={tf32}", f"precision={precision}", f"cudnn_benchmark={benchmark}")
    apply_speed_config(cfg, rn)  # the config path every sketch run takes (build_module)
    assert torch.get_float32_matmul_precision() == ("high" if tf32 == "true" else "highest")
    assert torch.backends.cudnn.allow_tf32 == (tf32 != "false")
    assert torch.backends.cudnn.benchmark == (benchmark == "true")
    lightning_cuda_setup(monkeypatch)  # raises on a mix of the legacy and new TF32 APIs


def test_each_bench_variant_passes_lightnings_cuda_setup(monkeypatch, restore_backend_flags):
    """`make bench` runs its variants in one process, where Lightning checks only the first row's flags;
    every variant's flags (fp32, then tf32, ...) must pass the check by themselves, whatever ran before.
    A flag set through the newer API beforehand (a mix) is replaced, not kept."""
    from clipasso_pl.accel import apply_speed_config
    from clipasso_pl.api import validate
    from clipasso_pl.bench.run import row_config
    from clipasso_pl.clip import TINY_RN, ClipFeatures
    from clipasso_pl.config import BENCH_VARIANTS

    cfg = compose("bench", ["preset=smoke"])
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # the newer API, as the code before this fix set it
    for name, variant in BENCH_VARIANTS.items():
        row = validate(row_config(cfg, "tiny-rn", 1, dict(variant), torch.device("cuda")))
        apply_speed_config(row, ClipFeatures(TINY_RN, None))
        lightning_cuda_setup(monkeypatch)
        assert torch.get_float32_matmul_precision() == ("high" if variant.get("tf32") else "highest"), name


@pytest.mark.parametrize("override, message", [("precision=16-mixed", "precision=16-mixed"),
                                               ("tf32=maybe", "tf32=maybe"),
                                               ("compile_clip=nonsense", "compile_clip=nonsense")])
@pytest.mark.slow
def test_bad_speed_switch_is_one_line(tmp_path, override, message):
    res = cli("sketch", "preset=smoke", f"target={TARGET}", override, f"hydra.run.dir={tmp_path}")
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr[-2000:]


@pytest.mark.slow
def test_bf16_run_through_the_trainer(tmp_path):
    result = run_sketch(sketch_cfg("precision=bf16-mixed", steps=4, eval_interval=2, seeds=[0]), tmp_path)
    assert result.best_svg.is_file() and result.summary["steps_run"] == 4


@pytest.mark.slow
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


def test_bench_smoke_of_one_variant(tmp_path):
    """The bench smoke of `make test`: fp32 only, one timed step per loop (the full smoke is slow)."""
    out = tmp_path / "step"
    res = cli("bench", "preset=smoke", f"target={TARGET}", "bench.run=[fp32]", "bench.repeats=1", "eval_interval=1",
              "canvas=64", f"bench.out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["variant"] == "fp32" and row["timed_steps"] == 1
    assert set(row["phases_ms"]) == {"render", "augment", "target_forward", "sketch_forward", "backward", "optimizer",
                                     "eval"}
    assert row["overhead_ms"] == pytest.approx(row["trainer_step_ms"] - row["bare_step_ms"])
    assert "| tiny-rn | 1 | fp32 |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
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
    from clipasso_pl.bench.run import main

    out = tmp_path / "r.json"
    assert main(["bench=render", "--out", str(out), "--strokes", "4", "--seeds", "1", "--repeats", "1"]) == 0
    assert json.loads(out.read_text())["rows"][0]["strokes"] == 4


@pytest.mark.slow
def test_bench_refuses_unknown_variant(tmp_path):
    res = cli("bench", "preset=smoke", "bench.run=[fp64]", f"bench.out={tmp_path / 'x'}")
    assert res.returncode == 2 and "fp64" in res.stderr.strip().splitlines()[-1]


def steps_on(device: str, run_dir: Path, steps: int = 3) -> torch.Tensor:
    """Points after ``steps`` Trainer steps on ``device`` (same seed, same draws)."""
    cfg = sketch_cfg("tf32=false", steps=steps, eval_interval=2, seeds=[0, 1000])
    cfg.trainer.accelerator = "gpu" if device == "cuda" else "cpu"
    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    trainer = build_trainer(cfg, run_dir, [])
    trainer.fit(module, train_dataloaders=step_loader(steps))
    assert module.points.device.type == device and module.target.device.type == device
    return module.points.detach().cpu()


@gpu_only
def test_same_step_on_cpu_and_cuda(tmp_path, restore_backend_flags):
    """Step 0 (same strokes, same draws) in full float32 (tf32=false): every loss term and the gradient agree
    tightly; after a few Adam steps the points agree more loosely (Adam's first update is +-lr whatever the
    gradient's size, so a near-zero gradient component of either sign moves a point by up to 2 lr)."""
    cpu_terms, cpu_grad = loss_and_grad("tf32=false")
    cuda_terms, cuda_grad = loss_and_grad("tf32=false", device="cuda")
    assert set(cuda_terms) == set(cpu_terms)
    for k in cpu_terms:
        assert rel(cuda_terms[k].cpu(), cpu_terms[k]) < 1e-4, k
    assert float((cuda_grad.cpu() - cpu_grad).norm() / cpu_grad.norm()) < 1e-4
    steps, lr = 3, 1.0
    moved = (steps_on("cuda", tmp_path / "cuda", steps) - steps_on("cpu", tmp_path / "cpu", steps)).abs()
    assert float(moved.max()) <= 2 * steps * lr + 1e-3  # Adam's bound
    assert float((moved > 1e-2).float().mean()) < 0.02, float(moved.max())  # all but a few sign flips agree


def resume_run(tmp_path: Path, name: str, edit=None, accelerator: str = "cpu", **opts):
    """A 6-step run stopped after step 3 (its checkpoint), ``edit`` applied to that checkpoint, then resumed to
    the end on ``accelerator``; returns the final checkpoint (step 6)."""
    part = tmp_path / name
    run_sketch(sketch_cfg("trainer.max_steps=3", f"trainer.accelerator={accelerator}", **opts), part)
    saved = (part / "config.yaml").read_text().replace("max_steps: 3", "max_steps: 6")
    if accelerator != "cpu":
        saved = saved.replace("accelerator: cpu", f"accelerator: {accelerator}")
    (part / "config.yaml").write_text(saved)
    ckpt = part / "checkpoints" / "last.ckpt"
    if edit is not None:
        state = torch.load(ckpt, weights_only=False)
        edit(state)
        torch.save(state, ckpt)
    result = run_sketch(compose("sketch", [f"resume={part}"]), tmp_path / "ignored")
    assert result.summary["steps_run"] == 6
    return torch.load(ckpt, weights_only=False, map_location="cpu")


RESUME = dict(steps=6, eval_interval=3, checkpoint_interval=3, seeds=[0])


def as_if_saved_on_a_gpu(state: dict) -> None:
    """What a CUDA run's checkpoint holds (read on a CPU): Adam's param groups with capturable=True."""
    for group in state["optimizer_states"][0]["param_groups"]:
        group["capturable"] = True


@pytest.mark.slow
def test_resume_across_devices_matches_an_uninterrupted_run(tmp_path):
    """A checkpoint saved with capturable=True (a GPU run's) and a plain CPU checkpoint both resume on the CPU,
    run on, and end where the uninterrupted run ends."""
    whole = run_sketch(sketch_cfg("trainer.accelerator=cpu", **RESUME), tmp_path / "whole")
    expected = torch.load(whole.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    for name, edit in (("from_gpu", as_if_saved_on_a_gpu), ("from_cpu", None)):
        final = resume_run(tmp_path, name, edit, **RESUME)
        assert final["global_step"] == expected["global_step"] == 6
        torch.testing.assert_close(final["state_dict"]["points"], expected["state_dict"]["points"], rtol=0, atol=1e-6)
        adam, ref = final["optimizer_states"][0], expected["optimizer_states"][0]
        assert [g["capturable"] for g in adam["param_groups"]] == [False]  # followed the device it ran on
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(adam["state"][0][k], ref["state"][0][k], rtol=0, atol=1e-6)


@gpu_only
def test_cpu_checkpoint_resumes_on_cuda_with_capturable_adam(tmp_path):
    """A CPU run's checkpoint resumed on CUDA: Adam becomes capturable and its step counts move to the GPU
    (no host read per step), and the run ends near the CPU's uninterrupted one."""
    whole = run_sketch(sketch_cfg("trainer.accelerator=cpu", "tf32=false", **RESUME), tmp_path / "whole")
    expected = torch.load(whole.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    final = resume_run(tmp_path, "to_cuda", accelerator="gpu", **RESUME)
    adam = final["optimizer_states"][0]
    assert [g["capturable"] for g in adam["param_groups"]] == [True]
    cuda_state = torch.load(tmp_path / "to_cuda" / "checkpoints" / "last.ckpt", weights_only=False)
    assert cuda_state["optimizer_states"][0]["state"][0]["step"].device.type == "cuda"
    moved = (final["state_dict"]["points"] - expected["state_dict"]["points"]).abs()
    assert float((moved > 1e-2).float().mean()) < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_two_gpus(tmp_path):
    """The CPU twins (gloo) are in test_distributed.py."""
    run = tmp_path / "ddp"
    res = cli("sketch", "preset=smoke", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=gpu",
                        "steps=12", "eval_interval=3", "logger=csv", f"hydra.run.dir={run}", timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 12 and summary["rank_steps"] == [12, 12] and summary["world_size"] == 2
    assert summary["rank_divergence"] == 0.0


@pytest.mark.slow
def test_scene_under_bf16_has_no_nonfinite_step():
    """200 simplicity steps (width MLP, Gumbel keep-probabilities) under bf16-mixed: the Gumbel uniforms and
    the keep-probabilities stay float32 (in bfloat16 ~0.2 % of the uniforms round to 1 and a log becomes
    -inf), and so does the render. Before: 6 of these 200 steps were non-finite (15 of 200 with two seeds,
    6 strokes and gradnorm, which only costs time here: three more backward passes per step)."""
    from clipasso_pl.clip import TINY_VIT, ClipFeatures, JointAugment
    from clipasso_pl.render import TorchRenderer
    from clipasso_pl.scene.losses import SceneClipLoss
    from clipasso_pl.scene.module import SceneSketchModule

    feats = ClipFeatures(TINY_VIT, None)
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 32, 32, generator=g)
    initial = 4 + 24 * torch.rand(1, 4, 4, 2, generator=g)
    loss = SceneClipLoss(feats.layer_names, layer=1, anchor_layer=0, anchor_weight=0.5)
    module = SceneSketchModule(target, feats, loss, JointAugment(num_augs=1, size=32), TorchRenderer(), initial,
                               seeds=[0], hidden=16, simplify=True, ratio=1.0, eval_start=1000, eval_interval=0,
                               gradnorm=False)
    nonfinite = []

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
            if not torch.isfinite(m.last_train["loss"]).all():
                nonfinite.append(trainer.global_step)

    trainer = pl.Trainer(max_steps=200, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", precision="bf16-mixed", callbacks=[Count()])
    trainer.fit(module, train_dataloaders=step_loader(200))
    assert trainer.global_step == 200 and nonfinite == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_gpu_check_stops_at_once_without_cuda(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    res = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "g.md")], capture_output=True,
                         text=True, env=ENV, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "needs a CUDA GPU" in lines[0], res.stderr
    assert not (tmp_path / "g.md").exists()
