"""From finished runs to the tables, plots and README blocks of ``results/<study>/`` (``make tables``).

Two stages, so the committed CSVs, not the (git-ignored) run directories, are the source of every table:

1. collect: run directories (``local_runs``) and, when asked and online, the W&B API (``wandb_runs``) become
   ``RunRecord``s, merged into ``results/<study>/runs.csv`` and ``epochs.csv`` (``results_csv``);
2. report: each study's CSVs become Markdown and LaTeX tables of mean +- sample std over seeds
   (``aggregate``, ``render``) with the 95% CI of the headline mean and seed-paired comparisons whose verdict
   lines follow ``docs/statistics.md`` (``statistics``, ``verdicts``), PNG curves with std bands (``plots``),
   and the generated README blocks (``readme_blocks``, ``report``).

A study is the ``logger.group`` a run was launched with (every ``configs/experiment/*.yaml`` sets it to its own
name), else the ``experiment=`` choice Hydra recorded.
"""

from dualadam.reporting.run_records import RunRecord

__all__ = ["RunRecord"]
