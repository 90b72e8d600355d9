"""Running `clipasso-pl` as a user does, in a subprocess: whole runs, and runs killed mid-way."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def cli_args(*args) -> list[str]:
    return [sys.executable, "-m", "clipasso_pl.cli", *args]


def cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(*args), capture_output=True, text=True, env=ENV, timeout=timeout)


def installed_cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`clipasso-pl *args` through the installed console script (the one next to this Python), as a user runs it."""
    script = Path(sys.executable).parent / "clipasso-pl"
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def kill_after_first_checkpoint(*args, run_dir: Path, timeout: float = 240) -> Path:
    """Start `clipasso-pl *args` in ``run_dir``, SIGKILL it once ``checkpoints/last.ckpt`` exists; returns that path."""
    proc = subprocess.Popen(cli_args(*args, f"hydra.run.dir={run_dir}"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ckpt
