"""`make gpu-check`: the GPU path checked on whatever CUDA machine this runs on, in under 8 minutes.

1. the CUDA tests (`pytest -m gpu`);
2. `clipasso-pl bench` with RN101 (random weights) at S = 1 and 3 for the variants in BENCH_VARIANTS;
3. one 2001-step RN101 sketch with random weights and 3 seeds, timed;
4. a 2-GPU DDP smoke run, where two GPUs exist.

Each step has its own timeout (their sum stays under 8 minutes). Results go to gpu-check.md (the
tables) and gpu-check/ (the runs and logs). Without CUDA it stops at once, saying so.

    python scripts/gpu_check.py [--out gpu-check.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_VARIANTS = "fp32,bf16,tf32"  # the bench.run variants (configs/bench.yaml names)
# (step, timeout in seconds): at most 8 minutes in all
TIMEOUTS = {"tests": 150, "bench": 130, "sketch": 140, "ddp": 60}
assert sum(TIMEOUTS.values()) <= 480
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
REPO = Path(__file__).resolve().parents[1]


def command() -> list[str]:
    """The installed `clipasso-pl` beside this Python, else the module."""
    script = Path(sys.executable).parent / "clipasso-pl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "clipasso_pl.cli"]


def run(name: str, args: list[str], log: Path) -> dict:
    """Run one step under its timeout; its output goes to ``log``; returns status and wall time."""
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            rc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=REPO,
                                timeout=TIMEOUTS[name]).returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {TIMEOUTS[name]} s"
    wall = time.perf_counter() - start
    print(f"{name}: exit {rc}, {wall:.1f} s (log: {log})", flush=True)
    return {"rc": rc, "wall_s": wall, "log": log}


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(text[-lines:])


def summary_rows(summary: dict, keys: list[str]) -> list[str]:
    return [f"| {k} | {summary.get(k)} |" for k in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.md", help="the markdown file of results")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA GPU and none is visible to torch "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): run it on a CUDA machine", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    work = REPO / "gpu-check"
    work.mkdir(exist_ok=True)
    cli = command()
    results = {}
    results["tests"] = run("tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests"],
                           work / "tests.log")
    results["bench"] = run("bench", [*cli, "bench", "bench.models=[RN101-quickgelu]", "bench.num_seeds=[1,3]",
                                     f"bench.run=[{BENCH_VARIANTS}]", f"bench.out={work / 'bench'}"],
                           work / "bench.log")
    sketch_dir = work / "sketch"
    results["sketch"] = run("sketch", [*cli, "sketch", "clip.pretrained=null", "init.pretrained=null", "logger=csv",
                                       "steps=2001", "seeds=[0,1000,2000]", f"hydra.run.dir={sketch_dir}"],
                            work / "sketch.log")
    ddp_dir = work / "ddp"
    if gpus >= 2:
        results["ddp"] = run("ddp", [*cli, "sketch", "preset=smoke", "trainer=ddp", "trainer.devices=2",
                                     "trainer.accelerator=gpu", "steps=12", "eval_interval=3", "logger=csv",
                                     f"hydra.run.dir={ddp_dir}"], work / "ddp.log")

    lines = [f"# gpu-check: {', '.join(names)} (torch {torch.__version__}, CUDA {torch.version.cuda})", "",
             "| step | exit | wall s | timeout s |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['rc']} | {r['wall_s']:.1f} | {TIMEOUTS[name]} |")
    if "ddp" not in results:
        lines.append(f"| ddp | skipped: {gpus} GPU | | |")
    lines += ["", "## CUDA tests (`pytest -m gpu`)", "", "```", tail(results["tests"]["log"]), "```"]
    bench_md = work / "bench.md"
    lines += ["", f"## Bench: RN101, random weights, S = 1 and 3, variants {BENCH_VARIANTS} (ms per step)", ""]
    lines += [bench_md.read_text() if bench_md.is_file() else "```\n" + tail(results["bench"]["log"]) + "\n```"]
    lines += ["", "## 2001-step RN101 sketch, random weights, 3 seeds", ""]
    summary_file = sketch_dir / "summary.json"
    if summary_file.is_file():
        s = json.loads(summary_file.read_text())
        lines += ["| | |", "|---|---|", *summary_rows(s, ["steps_run", "skipped_steps", "seconds_per_step", "wall_time_s",
                                                            "best_loss", "best_seed", "best_step", "renderer"]),
                  f"| whole command, s (model load, init, training, outputs) | {results['sketch']['wall_s']:.1f} |"]
    else:
        lines += ["```", tail(results["sketch"]["log"]), "```"]
    if "ddp" in results:
        lines += ["", "## 2-GPU DDP smoke", ""]
        ddp_summary = ddp_dir / "summary.json"
        if ddp_summary.is_file():
            s = json.loads(ddp_summary.read_text())
            lines += ["| | |", "|---|---|", *summary_rows(s, ["steps_run", "skipped_steps", "rank_steps", "world_size",
                                                                "rank_divergence", "seconds_per_step"])]
        else:
            lines += ["```", tail(results["ddp"]["log"]), "```"]
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
