"""The diffusion-theory escape experiment (``make escape``): runs the study, writes ``results/escape/``.

    python experiments/escape/run.py --out results/escape --readme experiments/escape/README.md
    python experiments/escape/run.py --tiny --out /tmp/escape-tiny      # every code path in seconds

With ``--readme`` the generated blocks of those files are rewritten from this run's numbers:
``<!-- escape-results:begin/end -->`` gets the full reading, ``<!-- escape-summary:begin/end -->`` the short one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dualadam.reporting.readme_blocks import rewrite_block

# The study's modules (landscape, simulate, theory, survival, study, report) sit next to this script:
# experiments/ is research code, not part of the installed package. Python puts a script's own folder on
# sys.path; this line does the same when the file is loaded another way (the tests load it by path).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import render_reading, render_summary, write_escape_results
from study import EscapeStudyConfig, run_escape_study

REPO = Path(__file__).resolve().parents[2]


def provenance(argv: list[str]) -> dict:
    """How these numbers were made: the command, the code version and the library versions."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    script = shlex.join(["python", "experiments/escape/run.py", *argv])
    return {"command": "make escape" if os.environ.get("MAKELEVEL") else script, "script": script,
            "commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain")),
            "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
            "torch_threads": torch.get_num_threads()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "escape", help="output directory")
    parser.add_argument("--tiny", action="store_true", help="the seconds-long smoke configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readme", type=Path, action="append", default=[],
                        help="a Markdown file whose generated escape blocks to rewrite (repeatable)")
    return parser.parse_args(argv)


def fill_readmes(paths: list[Path], blocks: dict[str, str]) -> None:
    for path in paths:
        content = path.read_text()
        present = [marker for marker in blocks if f"<!-- {marker}:begin -->" in content]
        if not present:
            raise SystemExit(f"{path} has none of the generated blocks {sorted(blocks)}; add "
                             "'<!-- escape-results:begin -->' and '<!-- escape-results:end -->' lines where they go")
        for marker in present:
            rewrite_block(Path(path), marker, blocks[marker])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)  # tensors of a few thousand numbers: one thread is fastest and leaves a core free
    cfg = EscapeStudyConfig.tiny() if args.tiny else EscapeStudyConfig()
    cfg = dataclasses.replace(cfg, seed=args.seed)
    start = time.perf_counter()
    result = run_escape_study(cfg)
    meta = {**provenance(argv), "wall_seconds": round(time.perf_counter() - start, 1)}
    paths = write_escape_results(result, args.out, provenance=meta)
    fill_readmes(args.readme, {"escape-results": render_reading(result, meta),
                               "escape-summary": render_summary(result, meta)})
    print(f"[escape] done in {meta['wall_seconds']}s; outputs in {args.out}: {', '.join(Path(p).name for p in paths.values())}")


if __name__ == "__main__":
    main()
