"""Running the installed ``clipasso-pl`` command as a user does, in a subprocess: whole runs, and runs
killed mid-way. Every test that runs the CLI goes through here (in-process ``cli.main`` calls are for
tests that need capsys or monkeypatch)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The console script pip installed next to the interpreter (`make install`, `pip install -e .`); it
# imports clipasso_pl from PYTHONPATH first, so a worktree's source runs through it too.
CLI = Path(sys.executable).parent / "clipasso-pl"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def cli_args(*args) -> list[str]:
    if not CLI.is_file():
        pytest.fail(f"{CLI} is missing: install the package first (make install, or pip install -e .)")
    return [str(CLI), *map(str, args)]


def cli_env(env: dict | None = None) -> dict:
    """ENV with ``env`` merged in; a value of None removes that variable."""
    merged = {**ENV, **(env or {})}
    return {k: v for k, v in merged.items() if v is not None}


def cli(*args, env: dict | None = None, timeout: float = 600, module: bool = False) -> subprocess.CompletedProcess:
    """``clipasso-pl *args`` to the end (``python -m clipasso_pl.cli *args`` with ``module``); its exit status,
    stdout and stderr."""
    argv = [sys.executable, "-m", "clipasso_pl.cli", *map(str, args)] if module else cli_args(*args)
    return subprocess.run(argv, capture_output=True, text=True, env=cli_env(env), timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess, needle: str = "") -> str:
    """The single ``error: ...`` line of a refused run (exit 2, no traceback) that contains ``needle``."""
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


def kill_after_first_checkpoint(*args, run_dir: Path, timeout: float = 240) -> Path:
    """Start `clipasso-pl *args` in ``run_dir``, SIGKILL it once ``checkpoints/last.ckpt`` exists; returns that path."""
    proc = subprocess.Popen(cli_args(*args, f"hydra.run.dir={run_dir}"), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ckpt
