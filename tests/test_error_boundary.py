"""The error boundary (clipasso_pl.errors.user_error, used by the CLI and sketch()): every failure a user
can cause or meet is one line `error: ...` and exit 2, a bug keeps its traceback, and a run that dies
from a full disk leaves a whole, resumable run directory."""

import errno
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from clipasso_pl import cli, images, sketch
from clipasso_pl.api import run_sketch
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError, user_error
from clipasso_pl.strokes import read_svg
import cli_runs

TARGET = "skimage:coffee"
SMOKE = ["preset=smoke", f"target={TARGET}", "logger=none"]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG whose header claims side x side pixels (past Pillow's decompression-bomb limit), a few bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ what counts as a user's problem
def test_user_error_unwraps_and_words_each_family():
    from hydra.errors import InstantiationException
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from PIL import Image

    ours = ClipassoError("renderer=diffvg needs pydiffvg")
    try:
        try:
            raise ours
        except ClipassoError as e:
            raise InstantiationException("Error in call to target 'DiffvgRenderer'") from e
    except InstantiationException as wrapped:
        assert user_error(wrapped) is ours
    assert "trainer" in str(user_error(MisconfigurationException("No supported gpu backend found!")))
    assert "downscale" in str(user_error(Image.DecompressionBombError("Image size (4e8 pixels) exceeds limit")))
    for code, fix in [(errno.ENOSPC, "free disk space"), (errno.EROFS, "writable file system"),
                      (errno.EACCES, "writable hydra.run.dir"), (errno.ENAMETOOLONG, "shorter")]:
        message = str(user_error(OSError(code, os.strerror(code), "/run/best.svg")))
        assert "/run/best.svg" in message and fix in message and "\n" not in message
    assert user_error(OSError(errno.ENOENT, "No such file", "x")) is None  # not an output problem: a bug
    assert user_error(KeyError("a bug")) is None and user_error(ZeroDivisionError()) is None


# ---------------------------------------------------------------------- errors inside instantiated objects
def test_diffvg_renderer_without_pydiffvg_is_one_line(tmp_path, capsys):
    try:
        import pydiffvg  # noqa: F401

        pytest.skip("pydiffvg is installed: renderer=diffvg works")
    except ImportError:
        pass
    with pytest.raises(SystemExit) as info:  # Hydra's InstantiationException wraps our one-line message
        cli.main(["sketch", *SMOKE, "renderer=diffvg", "steps=2", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2 and "pydiffvg" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", ["strokes=1.5", "lr=-1"])
def test_a_bad_value_from_the_shell_is_one_line_before_torch_loads(value, tmp_path):
    # Python's own import log (PYTHONPROFILEIMPORTTIME) on stderr tells which modules the command loaded.
    res = cli_runs.cli("sketch", value, f"hydra.run.dir={tmp_path / 'run'}", env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")]
    assert "hydra" in imported  # the log is there: it did compose the config
    assert "torch" not in imported  # refused before any model (or torch) loads
    res.stderr = "\n".join(line for line in res.stderr.splitlines() if not line.startswith("import time:"))
    cli_runs.one_line_error(res, value)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: trainer.accelerator=gpu is valid")
def test_gpu_accelerator_without_gpu_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["sketch", *SMOKE, "trainer.accelerator=gpu", "steps=2", f"hydra.run.dir={tmp_path / 'cli'}"])
    assert info.value.code == 2 and "trainer" in one_line(capsys.readouterr().err)
    with pytest.raises(ClipassoError, match="trainer"):  # the Python API has the same boundary
        sketch(TARGET, tmp_path / "api", ["preset=smoke", "trainer.accelerator=gpu"], steps=2, logger="none")


# --------------------------------------------------------------------------------- Pillow's safety limits
def test_decompression_bomb_is_one_line(tmp_path, capsys):
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200
    with pytest.raises(ClipassoError, match="decompression bomb"):
        sketch(bomb, tmp_path / "api", ["preset=smoke"], logger="none")
    with pytest.raises(SystemExit) as info:
        cli.main(["sketch", "preset=smoke", f"target={bomb}", "logger=none", f"hydra.run.dir={tmp_path / 'cli'}"])
    line = one_line(capsys.readouterr().err)
    assert info.value.code == 2 and str(bomb) in line and "downscale" in line


# ------------------------------------------------------------------------------------ a bug stays a bug
@pytest.mark.slow
def test_a_bug_keeps_its_traceback_and_hydra_full_error_is_honoured(tmp_path, capsys, monkeypatch):
    def buggy(cfg, run_dir):
        return {}["no such key"]  # a programming error, not the user's

    monkeypatch.setattr(cli, "sketch_main", buggy)
    with pytest.raises(SystemExit) as info:
        cli.main(["sketch", *SMOKE, f"hydra.run.dir={tmp_path / 'a'}"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" in err and "KeyError" in err and "HYDRA_FULL_ERROR" in err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(KeyError):  # the exception itself, with its whole stack
        cli.main(["sketch", *SMOKE, f"hydra.run.dir={tmp_path / 'b'}"])


# ------------------------------------------------------------------------------------------ no evals
@pytest.mark.slow
def test_no_evals_still_leave_best_svg(tmp_path):
    cfg = compose("sketch", SMOKE, steps=3, eval_interval=0, save_interval=0, checkpoint_interval=0, seeds=[0, 1])
    result = run_sketch(cfg, tmp_path)
    final = read_svg(tmp_path / "seeds" / "seed0" / "final.svg")[0]
    assert torch.equal(read_svg(result.best_svg)[0], final)  # the first seed's final strokes
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_is_final"] and summary["best_loss"] is None and summary["best_seed"] == 0
    assert "eval_interval=0" in summary["note"]


# ---------------------------------------------------------------------------- a disk that fills up
FULL_ARGS = [*SMOKE, "canvas=64", "seeds=[0]", "steps=40", "eval_interval=1", "save_interval=1",
             "checkpoint_interval=2"]


def check_dead_run(run: Path, line: str) -> None:
    """What a run killed by a full disk leaves: one line saying so and how to go on; whole files."""
    assert "No space left on device" in line and f"resume={run}" in line, line
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "summary.json").exists()
    points = read_svg(run / "best.svg")[0]  # the best so far, whole
    assert points.shape == (16, 4, 2) and torch.isfinite(points).all()
    progress = json.loads((run / "best_so_far.json").read_text())
    assert progress["best_seed"] == 0 and progress["best_loss"] > 0
    assert not [p for p in run.rglob("*.tmp")]  # no half-written temporaries left behind
    assert not (run / "seeds" / "seed0" / "snapshots" / "step00039.svg").exists()  # it did stop early


def check_resumed(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 40 and summary["best_loss"] > 0
    assert (run / "seeds" / "seed0" / "snapshots" / "step00039.svg").is_file()
    read_svg(run / "best.svg")


def mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


class FullDiskOs:
    """Stands in for ``os`` in clipasso_pl.images: files opened for writing fail with ENOSPC once
    ``budget`` bytes were written, as on a full disk (everything else is the real ``os``)."""

    def __init__(self, budget: int):
        self.budget = budget

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode="r", *args, **kwargs):
        real, disk = os.fdopen(fd, mode, *args, **kwargs), self

        class Writer:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

            def write(self, data):
                if len(data) > disk.budget:
                    disk.budget = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.budget -= len(data)
                return real.write(data)

        return Writer()


def test_fake_full_disk_fails_like_a_full_disk(tmp_path, monkeypatch):
    """The stand-in used where no tmpfs can be mounted: ENOSPC naming the file, the old file whole."""
    images.atomic_write_text(tmp_path / "a.txt", "old")
    monkeypatch.setattr(images, "os", FullDiskOs(budget=10))
    with pytest.raises(OSError) as info:
        images.atomic_write_text(tmp_path / "a.txt", "new text longer than ten bytes")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["tmpfs", "fake"])
def test_full_disk_ends_in_one_line_and_resumes(disk, tmp_path, capsys, monkeypatch):
    """A sketch on a small file system that fills up, then resumed after space is freed: a real 256 KiB
    tmpfs (needs root and mount; skipped, saying so, elsewhere), and a writer that raises ENOSPC after
    60 kB (runs everywhere)."""
    root = tmp_path / "disk"
    mounted = disk == "tmpfs" and mount_tmpfs(root, "256k")
    if disk == "tmpfs" and not mounted:
        pytest.skip("needs root and mount(8) for a 256 KiB tmpfs" if os.geteuid() != 0 else "mounting a tmpfs failed")
    run = root / "run"
    try:
        with monkeypatch.context() as m:
            if not mounted:
                m.setattr(images, "os", FullDiskOs(budget=60_000))
            with pytest.raises(SystemExit) as info:
                cli.main(["sketch", *FULL_ARGS, f"hydra.run.dir={run}"])
        assert info.value.code == 2
        check_dead_run(run, one_line(capsys.readouterr().err))
        if mounted:  # space is freed
            subprocess.run(["mount", "-o", "remount,size=16m", str(root)], check=True)
        cli.main(["sketch", f"resume={run}", f"hydra.run.dir={tmp_path / 'resume'}"])  # returns: no error
        check_resumed(run)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def test_report_usage_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["report"])
    assert info.value.code == 2 and "usage: clipasso-pl report" in one_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as info:
        cli.main(["report", str(tmp_path), "--bogus"])
    assert info.value.code == 2 and "--bogus" in one_line(capsys.readouterr().err)


def test_default_output_folder_not_writable_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("a file where Hydra's outputs/ folder should be")
    with pytest.raises(SystemExit) as info:
        cli.main(["sketch", *SMOKE])
    assert info.value.code == 2 and "hydra.run.dir=" in one_line(capsys.readouterr().err)


def test_after_a_write_failure_each_command_says_how_to_go_on(tmp_path):
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    assert cli.continue_hint("sketch", OmegaConf.create({"resume": None}), run) == "; then run it again"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert cli.continue_hint("sketch", OmegaConf.create({"resume": None}), run).endswith(f"resume={run}")
    assert f"sketches={run / 'sketches'}" in cli.continue_hint("evaluate", OmegaConf.create({"sketches": None}), run)
    assert "matrix_dir=/m" in cli.continue_hint("scene", OmegaConf.create({"matrix_dir": "/m"}), run)
