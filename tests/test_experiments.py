"""Experiments: W&B offline runs, sweeps with reports, the joblib and SLURM launchers (DDP: test_distributed.py)."""

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from cli_runs import cli, cli_env

SMALL = ["preset=smoke", "steps=6", "eval_interval=2", "save_interval=0", "checkpoint_interval=0"]


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of an offline W&B run, read back with W&B's own inspector."""
    logs = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    exe = Path(sys.executable).with_name("wandb")
    res = subprocess.run([str(exe), "leet", "inspect", "--json", str(logs[0])], capture_output=True, text=True,
                         env=cli_env(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_wandb_offline_run_has_metrics_images_and_artifact(tmp_path):
    out = tmp_path / "run"
    res = cli("sketch", *SMALL, "logger=wandb", "log_image_interval=2", "seeds=[0,1000]", f"hydra.run.dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    records = wandb_records(out)
    text = json.dumps(records)
    for name in ["train/loss", "train/conv/layer2", "train/conv/layer3", "train/fc", "eval/loss", "eval/loss_seed1",
                 "time/step_s", "best/loss", "best/step", "best/seed", "time/total_s",
                 "images/input", "images/saliency", "images/sketch", "images/best"]:
        assert name in text, name
    assert '"artifact"' in text or "sketch-" in text
    files = out.glob("wandb/offline-run-*/files/media/images/**/*.png")
    assert len(list(files)) >= 4
    assert "conv_layer_weights" in text and "tiny-rn" in text  # the resolved config went in as hyperparameters


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep") / "ablation_init"
    res = cli("sketch", "experiment=ablation_init", *SMALL, "logger=csv", "images='skimage:chelsea,skimage:coffee'",
              "seeds=[0,1]", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    return sweep


def test_report_of_a_two_job_sweep(tmp_path):
    """The report smoke of `make test`: a 2-job sweep (strokes 2 and 4, 2 steps each), then its report."""
    sweep = tmp_path / "sweep"
    res = cli("sketch", "-m", *SMALL, "steps=2", "eval_interval=1", "seeds=[0]", "logger=csv", "canvas=64",
              "target=skimage:coffee", "strokes=2,4", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    res = cli("report", str(sweep))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert sorted(r["strokes"] for r in rows) == ["2", "4"] and {r["runs"] for r in rows} == {"1"}
    assert all(float(r["best_loss_mean"]) > 0 for r in rows)
    assert "| strokes |" in (sweep / "report.md").read_text() and "report.md" in res.stdout


@pytest.mark.slow
def test_smoke_sweep_report(smoke_sweep):
    res = cli("report", str(smoke_sweep))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(smoke_sweep / "report.csv")))
    assert sorted(r["init"] for r in rows) == ["random", "saliency", "saliency_xdog"]
    for r in rows:
        assert r["targets"] == "2" and r["runs"] == "4"  # 2 images x 2 seeds
        assert float(r["best_loss_mean"]) > 0 and float(r["best_loss_std"]) >= 0
    assert "| init |" in (smoke_sweep / "report.md").read_text()
    from PIL import Image

    grid = Image.open(smoke_sweep / "grid.png")
    assert grid.height >= 3 * 128 and grid.width >= 4 * 128  # 3 configurations x (2 images x 2 seeds)
    assert Image.open(smoke_sweep / "curves.png").size[0] > 0
    assert "report.md" in res.stdout


def test_report_refuses_a_directory_without_runs(tmp_path):
    res = cli("report", str(tmp_path))
    assert res.returncode == 2 and "no finished runs" in res.stderr


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "abstraction"
    res = cli("sketch", "experiment=abstraction", *SMALL, "steps=30", "logger=csv", "images=skimage:chelsea",
              "seeds=[0]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
              f"hydra.sweep.dir={sweep}", "hydra.sweeper.params.strokes='4,8'")
    assert res.returncode == 0, res.stderr[-3000:]
    spans = []
    for s in sorted(sweep.glob("*/summary.json")):
        d = json.loads(s.read_text())
        spans.append((datetime.fromisoformat(d["launched"]), datetime.fromisoformat(d["finished"])))
    assert len(spans) == 2
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans  # the two jobs (load, init, training) overlapped in time


def test_images_folder_expands_to_its_image_files(tmp_path):
    from clipasso_pl.config import expand_images

    for name in ["b.png", "a.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert expand_images(str(tmp_path)) == f"{tmp_path / 'a.jpg'},{tmp_path / 'b.png'}"
    assert expand_images("skimage:chelsea,x.png") == "skimage:chelsea,x.png"


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_job(tmp_path):
    """The SLURM launcher's local twin: the same submitit code path, one job on this machine."""
    sweep = tmp_path / "submitit"
    res = cli("sketch", "experiment=abstraction", *SMALL, "steps=4", "logger=csv", "images=skimage:chelsea",
              "seeds=[0]", "hydra.sweeper.params.strokes='4'", "hydra/launcher=submitit_local",
              "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["strokes"] == 4 and summary["steps_run"] == 4
    assert list(sweep.glob(".submitit/*/*_log.out"))  # it really went through submitit
