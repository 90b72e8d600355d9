"""Renderer benchmark: ``clipasso-pl bench`` / ``python -m clipasso_pl.render.bench``.

Times forward (no grad) and forward+backward of ``loss = sum(rgb * W)`` for scenes of
16/64/256 strokes (the diffvg reference scenes when ../shared/reference/diffvg is
beside the repository, else scenes drawn the same way), S sketches at once, float32,
224 x 224: median and min of ``--repeats`` runs after 3 warm-ups. Ours is timed as a
training step runs it: static (no host sync), with the sizes a ``TorchRenderer`` fits to
the scene after one exact render (its headroom included). Prints a table with diffvg's
reference numbers and the targets beside ours, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..images import atomic_write_text
from ..strokes import Strokes
from . import TorchRenderer, rasterize

SIZE = 224
WARMUPS = 3
# diffvg on this machine class (CPU build, 2 threads): median forward / forward+backward, ms.
DIFFVG_REFERENCE_MS = {16: (54.0, 315.0), 64: (89.0, 508.0), 256: (271.0, 1460.0)}
# forward+backward targets for ours at S = 1 (CPU, 2 threads), ms.
TARGET_MS = {16: 21.0, 64: 51.0, 256: 146.0}
REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "diffvg"


def scene(num_strokes: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 4, 2], weight [H, W, 3]) for a benchmark scene of ``num_strokes`` strokes."""
    path = REFERENCE / f"strokes_{num_strokes:03d}.npz"
    if path.is_file():
        z = np.load(path)
        return z["points"].astype(np.float32), z["weight"].astype(np.float32)
    # Same recipe as the reference scenes (P1..P3 within +-30 px of P0).
    rng = np.random.default_rng(1234 + num_strokes)
    p0 = rng.uniform(20, 204, size=(num_strokes, 1, 2))
    points = np.clip(np.concatenate([p0, p0 + rng.uniform(-30, 30, size=(num_strokes, 3, 2))], 1), 0, SIZE)
    weight = np.random.default_rng(99).standard_normal((SIZE, SIZE, 3))
    return points.astype(np.float32), weight.astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device: torch.device) -> list[float]:
    out = []
    for i in range(WARMUPS + repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= WARMUPS:
            out.append(1e3 * (time.perf_counter() - t0))
    return out


def contention_probe_ms() -> float:
    """Median ms of one multiply of 200k floats. On an idle machine this is ~0.05 ms; when
    other processes hold the cores, each parallel region waits for a descheduled worker
    thread (several ms per op), which inflates every timing here."""
    x = torch.randn(200_000)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        x.mul(1.0001)
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_one(render, num_strokes: int, seeds: int, repeats: int, device: torch.device) -> dict:
    """Time one renderer (a function of Strokes) on one scene; returns ms figures."""
    pts, weight = scene(num_strokes)
    points = torch.from_numpy(pts).to(device)[None].repeat(seeds, 1, 1, 1)
    w = torch.from_numpy(weight).to(device).permute(2, 0, 1)  # [3, H, W]

    def forward():
        with torch.no_grad():
            render(Strokes.constant(points, 1.5, 1.0))

    def forward_backward():
        p = points.clone().requires_grad_(True)
        (render(Strokes.constant(p, 1.5, 1.0)) * w).sum().backward()

    fwd = _time(forward, repeats, device)
    fb = _time(forward_backward, repeats, device)
    return {
        "forward_ms": float(np.median(fwd)),
        "forward_min_ms": float(min(fwd)),
        "forward_backward_ms": float(np.median(fb)),
        "forward_backward_min_ms": float(min(fb)),
        "peak_rss_mb_so_far": _peak_rss_mb(),
    }


def _diffvg():
    try:
        from .renderers import DiffvgRenderer

        return DiffvgRenderer()
    except Exception:  # ClipassoError when pydiffvg is missing
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipasso-pl bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/render.json", help="JSON file to write")
    parser.add_argument("--strokes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3], help="sketches rendered at once (S)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available: use --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = SIZE

    def static(n: int, s: int):
        """A static render with the sizes fitted to this scene (one exact render, as an eval step)."""
        fitted = TorchRenderer()
        with torch.no_grad():
            fitted.render(Strokes.constant(torch.from_numpy(scene(n)[0]).to(device)[None].repeat(s, 1, 1, 1), 1.5),
                          size, size)
        capacity = fitted.capacity(n * s)

        def ours(strokes: Strokes):
            return rasterize(strokes.points, strokes.half_widths, strokes.opacities, size, size, 1, capacity)[0]

        return ours, capacity

    probe_before = contention_probe_ms()
    diffvg = _diffvg() if args.device == "cpu" else None
    rows = []
    for s in args.seeds:
        for n in args.strokes:
            ours, capacity = static(n, s)
            row = {"renderer": "torch", "strokes": n, "seeds": s, **bench_one(ours, n, s, args.repeats, device),
                   "capacity": capacity.as_needs()}
            rows.append(row)
            if diffvg is not None:
                d = bench_one(lambda st: diffvg.render(st, size, size), n, s, args.repeats, device)
                rows.append({"renderer": "diffvg", "strokes": n, "seeds": s, **d})

    header = (
        f"{'renderer':8} {'strokes':>7} {'S':>2} {'forward ms':>17} {'fwd+bwd ms':>17} "
        f"{'diffvg ref fwd':>14} {'diffvg ref f+b':>14} {'target f+b':>10}"
    )
    print(f"device={args.device} threads={args.threads} size={size} float32 repeats={args.repeats} (median (min))")
    print(header)
    for r in rows:
        ref = DIFFVG_REFERENCE_MS.get(r["strokes"], (float("nan"), float("nan")))
        target = TARGET_MS.get(r["strokes"]) if r["renderer"] == "torch" and r["seeds"] == 1 else None
        mark = "" if target is None else (" ok" if r["forward_backward_ms"] <= target else " MISSED")
        print(
            f"{r['renderer']:8} {r['strokes']:7d} {r['seeds']:2d} "
            f"{r['forward_ms']:8.1f} ({r['forward_min_ms']:6.1f}) {r['forward_backward_ms']:8.1f} "
            f"({r['forward_backward_min_ms']:6.1f}) {ref[0]:14.0f} {ref[1]:14.0f} "
            f"{'' if target is None else f'{target:.0f}':>10}{mark}"
        )
    peak = _peak_rss_mb()
    probe = max(probe_before, contention_probe_ms())
    print(f"peak RSS of this process: {peak:.0f} MiB")
    if probe > 1.0:
        print(
            f"warning: a 200k-float multiply took {probe:.1f} ms (idle: ~0.05 ms): other processes share the "
            f"cores and every parallel op waits for a worker thread; rerun on an idle machine or with --threads 1"
        )
    report = {
        "device": args.device,
        "threads": args.threads,
        "size": size,
        "repeats": args.repeats,
        "warmups": WARMUPS,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "diffvg_reference_ms": {str(k): {"forward": v[0], "forward_backward": v[1]} for k, v in DIFFVG_REFERENCE_MS.items()},
        "target_forward_backward_ms_s1": {str(k): v for k, v in TARGET_MS.items()},
        "rows": rows,
        "peak_rss_mb": peak,
        "contention_probe_ms": probe,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
