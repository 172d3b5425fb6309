"""What a benchmark's figures depend on besides the code: date, machine, load, torch build, device.

The benchmark scripts (``scripts/bench_*.py``, ``scripts/gpu_check.py``) record this dict next to their
figures and open their docs block with ``describe(context)``, so a reader can tell where a number came from.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The 1-minute load average, as ``uptime`` prints it first."""
    return round(os.getloadavg()[0], 2)


def bench_context(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
            "gpu": gpu, "load_start": load_average()}


def describe(context: dict) -> str:
    """One sentence: date, machine, threads, torch, load at the start (and at the end when recorded)."""
    gpu = f"{context['gpu']} GPU, " if context.get("gpu") else ""
    end = f", {context['load_end']} at the end" if "load_end" in context else ""
    return (f"{context['date']} on {gpu}{context['cpu']} ({context['cpu_count']} CPUs, "
            f"{context['torch_threads']} torch thread(s)), torch {context['torch']}; load average "
            f"{context['load_start']} at the start{end}")


def publish(results: dict, name: str, text: str, json_path: Path, doc: Path | None) -> None:
    """Print ``text`` (the rendered block), write ``results`` to ``json_path`` atomically and, with ``doc`` (a Markdown file),
    rewrite its ``<!-- name:begin/end -->`` block with ``text``: one way out for every benchmark's figures."""
    from dualadam.atomic_files import atomic_write_json
    from dualadam.reporting.readme_blocks import rewrite_block

    print("\n" + text)
    atomic_write_json(Path(json_path), results, indent=1)
    if doc is not None:
        rewrite_block(doc, name, text)
        print(f"rewrote the {name} block of {doc}")
