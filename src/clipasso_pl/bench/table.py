"""The benchmark's report: the machine it ran on and one markdown table row per (model, S, variant)."""

from __future__ import annotations

import os
import platform

import torch

from .timing import PHASES


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    """One table row per (model, S, variant): phase medians, their sum, bare and trainer steps, overhead (ms)."""
    head = ["model", "S", "variant", "ops / step", "kernels / step", "syncs / step", *PHASES, "phases sum", "train step (median)", "phases / step",
            "bare step", "trainer step", "trainer - bare", "fixed overhead (median)", "fixed overhead (mean)"]
    lines = [f"Device: {report['device']} ({report['machine'].get('gpu', report['machine']['processor'] or 'cpu')}), "
             f"torch {report['machine']['torch']}, {report['machine']['threads']} threads, load average "
             f"{', '.join(f'{x:.2f}' for x in report['machine']['load_average'])}; ms per step, "
             f"{report['warmup']} warm-up steps; eval amortised over its interval.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['num_seeds']} | {r['variant']} | skipped: {r['skipped']} |")
            continue
        ph = r.get("phases_ms", {})
        cells = [r["model"], str(r["num_seeds"]), r["variant"], str(r.get("ops_per_step", "")),
                 str(r.get("kernels_per_step", "")), str(r.get("syncs_per_step", "")), *(fmt(ph.get(p), 2) for p in PHASES),
                 fmt(r.get("phases_sum_ms"), 2), fmt(r.get("train_step_median_ms"), 2), fmt(r.get("phases_over_step"), 3),
                 fmt(r.get("bare_step_ms"), 2), fmt(r.get("trainer_step_ms"), 2),
                 fmt(r.get("overhead_ms"), 2), fmt(r.get("fixed_overhead_ms"), 2),
                 fmt(r.get("fixed_overhead_mean_ms"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
