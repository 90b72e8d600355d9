"""``clipasso-pl bench``: the rows of a composed ``bench`` config, run and written as JSON and markdown.

A row is (CLIP model, S seeds, speed variant): the sketch config with random CLIP weights
and the variant's speed keys (``config.BENCH_VARIANTS``). ``bench=render`` hands the other
arguments to the renderer benchmark (:mod:`clipasso_pl.render.bench`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ClipassoError
from .loops import bench_row
from .table import machine, markdown


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipassoError("bench.device=cuda but CUDA is not available: use bench.device=cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ClipassoError(f"bench.device={name}: use auto, cpu or cuda")
    return torch.device(name)


def row_config(cfg: DictConfig, model: str, num_seeds: int, variant: dict, device: torch.device) -> DictConfig:
    """The sketch config of one benchmark row: random CLIP weights, S seeds, the variant's speed keys."""
    row = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    del row["bench"]
    row.clip.model, row.clip.pretrained = model, None
    row.init.mode, row.init.pretrained = "random", None  # no saliency model: init is not timed
    row.seeds = list(range(num_seeds))
    for key, value in variant.items():
        row[key] = value
    row.trainer.accelerator = "gpu" if device.type == "cuda" else "cpu"
    row.trainer.devices = 1
    return row


def run_bench(cfg: DictConfig) -> dict:
    """Run the benchmark of a composed ``bench`` config; writes ``<bench.out>.json`` and ``.md``."""
    from ..api import validate
    from ..clip import register_tiny_models
    from ..config import BENCH_VARIANTS
    from ..images import atomic_write_text
    from ..sketch_target import config_target

    b = cfg.bench
    register_tiny_models()
    device = resolve_device(str(b.device))
    if b.threads:
        torch.set_num_threads(int(b.threads))
    target = config_target(cfg)  # the sketch's loader: mask, official_padding and all
    rows = []
    for model in b.models:
        for num_seeds in b.num_seeds:
            for name in b.run:
                base = {"model": str(model), "num_seeds": int(num_seeds), "variant": str(name)}
                if device.type != "cuda" and name in b.cuda_only:
                    rows.append({**base, "skipped": f"no effect on {device.type}"})
                    continue
                row_cfg = row_config(cfg, str(model), int(num_seeds), dict(BENCH_VARIANTS[name]), device)
                validate(row_cfg)
                row = {**base, **bench_row(row_cfg, target, device, list(b.loops), int(b.warmup), int(b.repeats))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"device": device.type, "warmup": int(b.warmup), "repeats": int(b.repeats), "machine": machine(device),
              "strokes": int(cfg.strokes), "canvas": int(cfg.canvas), "num_augs": int(cfg.augment.num_augs),
              "eval_interval": int(cfg.eval_interval), "rows": rows}
    out = Path(str(b.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``clipasso-pl bench [key=value ...]``; ``bench=render`` hands the other arguments to the renderer benchmark."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import compose

    argv = list(sys.argv[1:] if argv is None else argv)
    if "bench=render" in argv:
        from ..render.bench import main as render_main

        return render_main([a for a in argv if a != "bench=render"])
    try:
        cfg = compose("bench", argv)
    except (HydraException, OmegaConfBaseException) as e:
        raise ClipassoError(" ".join(str(e).split()) + " (see the keys in configs/bench.yaml)") from None
    run_bench(cfg)
    return 0
