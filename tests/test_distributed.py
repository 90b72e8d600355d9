"""DDP on the CPU (gloo): two ranks started as a user starts them, through the installed `clipasso-pl`.

Every rank runs all `steps`, decides from rank 0's eval losses (the best step, early stopping),
keeps identical strokes, and rank 0 alone writes the run directory. The 2-GPU twin of these
runs is in test_gpu_path.py.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runs import ENV, cli  # noqa: E402

DDP = ["preset=smoke", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "logger=csv"]


def only_rank0_wrote(run: Path) -> None:
    names = {p.name for p in run.rglob("*")}
    assert "summary.json" in names and "config.yaml" in names
    # no Hydra log, write probe or checkpoint temporary of another rank
    assert not [n for n in names if "ddp_process" in n or n.startswith((".write_test", ".last.ckpt"))], names


@pytest.mark.slow
def test_ddp_from_the_installed_command_runs_every_step_on_both_ranks(tmp_path):
    run = tmp_path / "ddp"
    res = cli("sketch", *DDP, "steps=12", "eval_interval=3", f"hydra.run.dir={run}", timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 12 and summary["rank_steps"] == [12, 12]  # not 12 / 2 ranks each
    assert summary["world_size"] == 2
    assert summary["rank_divergence"] == 0.0  # strokes identical on both ranks
    assert summary["best_step"] in (0, 3, 6, 9)
    assert res.stdout.count("best sketch:") == 1  # rank 0 reports
    only_rank0_wrote(run)


@pytest.mark.slow
def test_ddp_scene_trains_on_both_ranks_and_rank0_alone_writes(tmp_path):
    """`clipasso-pl scene` under DDP: rank 1 trains every stage in step with rank 0 (it warm-starts each
    level from its own memory, since it writes nothing to read back) and rank 0 alone writes and reports."""
    from test_scene import make_scene

    scene = make_scene(tmp_path / "scene.png")
    run = tmp_path / "ddp"
    res = cli("scene", *DDP, f"target={scene}", f"hydra.run.dir={run}", timeout=400, env={"LAMA_MODEL": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["cells_done"] == summary["cells_total"] == 4
    assert res.stdout.count("scene matrix:") == 1 and res.stdout.count("fidelity:") == 2  # rank 0 reports
    only_rank0_wrote(run)


@pytest.mark.slow
def test_ddp_early_stop_ends_both_ranks_at_the_same_step(tmp_path):
    """lr ~ 0: the eval loss stops moving, so the run stops at the second calm eval (step 6) on both ranks.
    Through `python -m` (the other way to start it); a rank stopping alone would hang the other: the timeout."""
    run = tmp_path / "ddp"
    res = cli("sketch", *DDP, "steps=30", "eval_interval=3", "lr=1e-9", "checkpoint_interval=3",
              f"hydra.run.dir={run}", timeout=400, module=True)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 7 and summary["rank_steps"] == [7, 7]  # the step after the eval at 6
    assert summary["rank_divergence"] == 0.0 and summary["world_size"] == 2
    only_rank0_wrote(run)


RANK0_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from clipasso_pl.training.ddp import from_rank0

def run(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # the ranks' eval losses differ in the last bits, as on GPUs
    out = from_rank0({"loss": torch.tensor([1.0, 2.0]) + rank * 1e-6, "fc": torch.tensor([0.5, 3.0]) * (rank + 1)})
    # one file per rank: two ranks printing to one pipe may interleave their lines
    with open(sys.argv[2] + f"/rank{rank}.txt", "w") as f:
        f.write(f"{rank} {out['loss'].tolist()} {out['fc'].tolist()}")
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[1]),), nprocs=2)
"""


@pytest.mark.slow
def test_every_rank_takes_rank0s_eval_losses(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ranks.py"
    script.write_text(RANK0_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(port), str(tmp_path)], capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert lines == ["0 [1.0, 2.0] [0.5, 3.0]", "1 [1.0, 2.0] [0.5, 3.0]"], res.stdout
