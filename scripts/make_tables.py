"""``make tables``: finished runs -> ``<results>/<study>/`` CSVs -> tables, plots and the docs' blocks.

    python scripts/make_tables.py                                  # -> outputs/results/<study>/, no doc
    python scripts/make_tables.py --roots /scratch/me/multirun     # other run directories
    python scripts/make_tables.py --wandb --wandb-entity my-team   # also the W&B API (skipped when offline)
    python scripts/make_tables.py --committed                      # the repository's results/ and docs
    python scripts/make_tables.py --committed --no-collect         # only rebuild tables from results/*/runs.csv
    python scripts/make_tables.py --reference adamw                # pair every optimizer with AdamW, not Adam
    python scripts/make_tables.py --target-metric val/acc --target 60   # steps to reach val/acc >= 60

A study is the ``logger.group`` a run was launched with (each ``configs/experiment/<study>.yaml`` sets it to
``<study>``), else its ``experiment=`` choice; its files go to ``outputs/results/<study>/``, and to the
repository's committed ``results/<study>/`` only when asked (``--committed``, as the committed studies' make
targets do, or ``--results <folder>``). Blocks of Markdown files are rewritten only with ``--committed`` (README.md
and docs/results.md) or ``--doc FILE``. Runs are merged into the
study's CSVs (a run found again replaces its rows); then every study with a ``runs.csv`` gets ``table.md``,
``table.tex``, ``test_acc.png``, ``gap_acc.png``, ``seeds.png``, ``schedules.png``, ``steps_to_target.png`` and
``README.md``, and
every ``<!-- results:<study>:begin/end -->`` block (the full table) and ``<!-- verdicts:<study>:begin/end -->``
block (its verdict lines alone, for README.md's findings) of those files is rewritten. Each table ends with
seed-paired comparisons against the reference (and DualAdam against the matched-warmup control) and their
verdict lines (docs/statistics.md), then the steps each run took to reach a target (by default the lowest of
the reference's median final val/acc, or test/acc without a validation split). Each study is labelled with its
protocol: tuned (a ``protocol.json`` from ``python -m dualadam.compare`` beside it) or the paper protocol.
The same CSVs always give the same bytes. Across studies: ``scripts/performance_profile.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from dualadam.reporting.local_runs import collect_local_runs
from dualadam.reporting.protocols import tuned_protocol
from dualadam.reporting.report import fill_doc, load_study, write_study_report
from dualadam.reporting.results_csv import RUNS_FILE, merge_study
from dualadam.reporting.run_records import study_folder_name
from dualadam.reporting.statistics import ComparisonPlan
from dualadam.reporting.targets import TargetSpec
from dualadam.reporting.wandb_runs import fetch_wandb_runs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOTS = ("outputs", "multirun", "results/runs")
COMMITTED_RESULTS, OUTPUT_RESULTS = Path("results"), Path("outputs/results")
TARGET_METRICS = ("val/acc", "test/acc", "train_eval/acc", "val/loss", "test/loss", "train_eval/loss")
# Where the committed studies are shown: README.md's findings (verdict lines) and the full tables in the guide.
COMMITTED_DOCS = (Path("README.md"), Path("docs/results.md"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", nargs="*", type=Path, default=[Path(r) for r in DEFAULT_ROOTS],
                        help=f"folders to search for run directories (default: {' '.join(DEFAULT_ROOTS)})")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"where <study>/ folders go (default {OUTPUT_RESULTS}; {COMMITTED_RESULTS} with --committed)")
    parser.add_argument("--committed", action="store_true",
                        help=f"write the repository's committed {COMMITTED_RESULTS}/<study>/ and the blocks of "
                             f"{' and '.join(str(d) for d in COMMITTED_DOCS)}")
    parser.add_argument("--doc", "--readme", dest="doc", type=Path, action="append", default=None,
                        help="a Markdown file whose results and verdicts blocks to rewrite (repeatable; default "
                             f"{' '.join(str(d) for d in COMMITTED_DOCS)} with --committed, none otherwise)")
    parser.add_argument("--no-doc", "--no-readme", dest="no_doc", action="store_true",
                        help="rewrite no Markdown block (e.g. make demo)")
    parser.add_argument("--print", action="store_true", help="print each study's table.md (e.g. make demo)")
    parser.add_argument("--study", action="append", default=None, help="only this study (repeatable)")
    parser.add_argument("--no-collect", action="store_true", help="skip the search; rebuild from the CSVs")
    parser.add_argument("--reference", default=ComparisonPlan.reference,
                        help="the optimizer label every other is paired with (default: %(default)s)")
    parser.add_argument("--target-metric", default=None, choices=TARGET_METRICS,
                        help="the metric of the steps-to-target table and plot (default: val/acc where the "
                             "study has a validation split, else test/acc)")
    parser.add_argument("--target", type=float, default=None,
                        help="the target value (default: the reference optimizer's median final value)")
    parser.add_argument("--protocol-json", type=Path, default=None,
                        help="the protocol record of the --study reported (python -m dualadam.compare passes "
                             "it; otherwise a study's own <results>/<study>/protocol.json is read)")
    parser.add_argument("--wandb", action="store_true", help="also read runs from the W&B API (needs network)")
    parser.add_argument("--wandb-project", default="dualadam")
    parser.add_argument("--wandb-entity", default=None)
    args = parser.parse_args(argv)
    if args.protocol_json is not None and (args.study is None or len(args.study) != 1):
        parser.error(f"--protocol-json {args.protocol_json}: it is one study's record; name that study with "
                     "exactly one --study")
    if args.protocol_json is not None and not args.protocol_json.is_file():
        parser.error(f"--protocol-json {args.protocol_json}: no such file; pass the protocol.json that "
                     "python -m dualadam.compare wrote")
    if args.results is None:
        args.results = COMMITTED_RESULTS if args.committed else OUTPUT_RESULTS
    return args


def experiment_command(study: str) -> str | None:
    """How a study's runs are launched, when it is one of the pinned experiment configs."""
    if (REPO / "configs" / "experiment" / f"{study}.yaml").is_file():
        return f"python -m dualadam.train -m experiment={study}"
    return None


def collect(args: argparse.Namespace) -> None:
    records, notes = collect_local_runs(args.roots)
    if args.wandb:
        remote, note = fetch_wandb_runs(args.wandb_project, args.wandb_entity, args.study)
        known = {r.wandb_run_id for r in records if r.wandb_run_id}
        records += [r for r in remote if r.wandb_run_id not in known]   # a local copy wins over W&B's
        notes.append(note)
    by_study = defaultdict(list)
    for record in records:
        if args.study is None or record.study in args.study:
            by_study[study_folder_name(record.study)].append(record)
    for folder_name, study_records in sorted(by_study.items()):
        merge_study(args.results / folder_name, study_records)
        notes.append(f"{args.results / folder_name}: {len(study_records)} runs collected")
    print("\n".join(f"[tables] {n}" for n in notes))


def check_reference(reference: str, studies: list) -> None:
    """Before any table is written: a ``--reference`` no study ran is a typo, not a table without pairs."""
    found = sorted({row["optimizer"] for study in studies for row in study.table.rows})
    if studies and reference not in found:
        raise SystemExit(f"[tables] --reference {reference}: no study here has runs of that optimizer; use one "
                         f"of the optimizer labels of these studies: {', '.join(found)}")


def report(args: argparse.Namespace) -> None:
    studies, plan = {}, ComparisonPlan(reference=args.reference)
    target = TargetSpec(args.target_metric, args.target)
    for runs_csv in sorted(args.results.glob(f"*/{RUNS_FILE}")):
        study = replace(load_study(runs_csv.parent), target=target)
        if args.protocol_json is not None and study.name in args.study:
            study = replace(study, protocol=tuned_protocol(json.loads(args.protocol_json.read_text())))
        studies[runs_csv.parent.name] = study   # every study, for the docs' blocks
    check_reference(args.reference, [s for s in studies.values() if args.study is None or s.name in args.study])
    for study in studies.values():
        if args.study is not None and study.name not in args.study:
            continue
        write_study_report(study, experiment_command(study.name), plan)
        table = study.table
        print(f"[tables] {study.name}: {len(table.rows)} runs, {len(table.rows) - len(table.excluded)} averaged, "
              f"{len(table.excluded)} not averaged -> {study.folder}/")
        print(f"[tables] {study.name}: protocol: {study.protocol.short}")
        if args.print:
            print((study.folder / "table.md").read_text())
    if not studies:
        print(f"[tables] no study has results yet (no {args.results}/<study>/{RUNS_FILE})")
    default_docs = list(COMMITTED_DOCS) if args.committed else []
    docs = [] if args.no_doc else args.doc if args.doc is not None else default_docs
    for doc in docs:
        notes = fill_doc(doc, args.results, studies, plan) if doc.is_file() else [f"{doc}: not found, skipped"]
        for note in notes:
            print(f"[tables] {note}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="[tables] %(levelname)s %(message)s")
    print(f"[tables] {shlex.join(['python', 'scripts/make_tables.py', *(sys.argv[1:] if argv is None else argv)])}")
    if not args.no_collect:
        collect(args)
    report(args)


if __name__ == "__main__":
    main()
