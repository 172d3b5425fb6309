"""The paper-table experiment configs, and `make tables` (scripts/make_tables.py) on real runs.

Every ``configs/experiment/*.yaml`` composes and trains one step on synthetic data; the paper configs pin the
authors' protocol. The tables are built from a fixture of real runs: a Hydra multirun of an experiment config
(2 optimizers x 3 seeds, 2 epochs), a run that diverges and one that fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from scipy import stats as scipy_stats

from dualadam.compare.__main__ import prepare
from dualadam.compare.search_space import load_search_space
from dualadam.reporting.aggregate import build_study_table
from dualadam.reporting.local_runs import read_local_run
from dualadam.reporting.readme_blocks import read_block
from dualadam.reporting.render import optimizer_name
from dualadam.reporting.report import PENDING_BLOCK, load_study, study_markdown, study_verdicts
from dualadam.reporting.results_csv import read_rows
from dualadam.reporting.wandb_runs import fetch_wandb_runs, record_from_wandb_run
from dualadam.train import train
from dualadam.training.metrics import EPOCH, GAP_ACC, TEST_ACC
from dualadam.training.outputs import read_metrics
from tests.conftest import CONFIG_DIR, FAST_OVERRIDES, REPO, compose_train_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
PAPER_STUDIES = {  # study -> (dataset, model): the grid the authors' code implies
    "paper_cifar10_resnet18": ("cifar10", "resnet18_cifar"),
    "paper_cifar10_resnet50": ("cifar10", "resnet50_cifar"),
    "paper_cifar10_vit": ("cifar10", "vit_paper_32_4"),
    "paper_cifar100_resnet18": ("cifar100", "resnet18_cifar"),
    "paper_cifar100_resnet50": ("cifar100", "resnet50_cifar"),
    "paper_cifar100_vit": ("cifar100", "vit_paper_32_4"),
    "paper_tinyimagenet_vgg16": ("tiny_imagenet", "vgg16_bn_cifar"),
    "paper_tinyimagenet_vit": ("tiny_imagenet", "vit_paper_64_8"),
    "paper_imagenet_vit": ("imagenet", "vit_paper_224_16"),
}
PAPER_OPTIMIZERS = ["adam", "adamw", "radam", "nadam", "dualadam", "invadam"]
FAIR_STUDIES = sorted(name for name in EXPERIMENTS if name.startswith("fair_"))
# One step on 32 synthetic images, whatever subsets or analysis an experiment asks for.
ONE_STEP = ("dataset=synthetic", "dataset.train_size=32", "dataset.test_size=32", "dataset.train_subset=null",
            "dataset.test_subset=null", "dataset.train_eval_size=null", "trainer.batch_size=32",
            "trainer.epochs=1")
# The fixture study holds a validation split (fair_*: dataset.val_size): 16 of the 64 images.
TINY_RUNS = ("dataset=synthetic", "dataset.train_size=64", "++dataset.val_size=16", "dataset.test_size=32",
             "model.kwargs.width=4",
             "trainer.epochs=2")
# The final solution's sharpness, cheaply (the tables gain its columns when runs have it).
SHARPNESS = ("analysis.sharpness=true", "analysis.batches=1", "analysis.eig_iters=3", "analysis.trace_samples=2")
FIXTURE_STUDY = "fair_cifar10_resnet18"
FIXTURE_OPTIMIZERS = ["adam", "dualadam"]
MAKE_TABLES = REPO / "scripts" / "make_tables.py"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread is many times faster than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quiet_env(tmp: Path) -> dict[str, str]:
    """A subprocess environment with one thread and W&B kept away from any account (see isolated_wandb)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "OMP_NUM_THREADS": "1", "CI": "1", "WANDB_MODE": "disabled", "NETRC": str(tmp / "no-netrc"),
            "WANDB_CONFIG_DIR": str(tmp / "wandb-config")}


def compose_with_hydra(overrides: list[str]):
    """The composed config including the ``hydra`` node (sweeper params live there)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def sweep_values(cfg, key: str) -> list[str]:
    return str(cfg.hydra.sweeper.params[key]).split(",")


# ---------------------------------------------------------------------------------------- experiment configs


def tiny_mode_of_task(task: str) -> str:
    """The ``configs/debug/`` file that makes a run of ``task`` take seconds."""
    for path in sorted((CONFIG_DIR / "debug").glob("*.yaml")):
        if compose_train_config([f"debug={path.stem}"], fast=False).task == task:
            return path.stem
    pytest.fail(f"no configs/debug/*.yaml shrinks task={task}: add one (as debug=smoke does for images) so its "
                "experiment configs can be tested")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_trains_one_step(make_cfg, name):
    composed = compose_train_config([f"experiment={name}"], fast=False)
    task = composed.task
    if task == "image_classification":
        # A study with a validation split keeps one, shrunk: 8 of 40 images held out, 32 left for one step.
        holds_val = composed.dataset.get("val_size") is not None
        cfg = make_cfg(f"experiment={name}", *ONE_STEP,
                       *(("dataset.train_size=40", "dataset.val_size=8") if holds_val else ()))
    else:  # another task's tiny mode over the experiment (debug is applied after experiment)
        cfg = make_cfg(f"experiment={name}", f"debug={tiny_mode_of_task(task)}", "trainer.epochs=1",
                       "logger.mode=disabled", fast=False)
    summary = train(cfg)
    assert summary["status"] == "completed", summary
    assert len(read_metrics(cfg.run_dir)) == 1
    if task == "image_classification":
        assert summary["final"]["optim/steps"] == 1


def test_every_paper_study_has_its_config():
    assert set(PAPER_STUDIES) <= set(EXPERIMENTS), sorted(set(PAPER_STUDIES) - set(EXPERIMENTS))


@pytest.mark.parametrize("name", sorted(PAPER_STUDIES))
def test_paper_config_pins_the_authors_protocol(name):
    cfg = compose_with_hydra([f"experiment={name}"])
    assert (cfg.dataset.name, cfg.model.name) == PAPER_STUDIES[name]
    assert (cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.epochs, cfg.seed) == (1e-2, 128, 200, 42)
    assert (cfg.scheduler.name, cfg.scheduler.min_lr_ratio, cfg.trainer.precision) == ("cosine_epoch", 1e-3, "fp16")
    assert cfg.switch_rate == 8e-5 and cfg.dataset.normalization == "paper"
    assert cfg.logger.group == name, "make tables identifies a study by logger.group"
    assert sweep_values(cfg, "optimizer") == PAPER_OPTIMIZERS
    # One lr for all, whatever the optimizer's own file says (sgd's is 0.1).
    assert compose_train_config([f"experiment={name}", "optimizer=sgd"], fast=False).optimizer.lr == 1e-2
    dual = compose_train_config([f"experiment={name}", "optimizer=dualadam"], fast=False)
    assert dual.optimizer.kwargs.switch_rate == 8e-5


@pytest.mark.parametrize("name", FAIR_STUDIES)
def test_fair_config_is_the_paper_recipe_tuned_on_a_validation_split(name):
    cfg = compose_with_hydra([f"experiment={name}"])
    assert cfg.dataset.val_size == 5000 and cfg.trainer.monitor == "val/acc"
    assert {"adam", "adamw", "sgd", "dualadam", "adam_matched_warmup"} <= set(cfg.compare.optimizers)
    # Everything but the split, the monitor, the protocol block, the lr and the seeds is the paper protocol of
    # the same dataset and model.
    paper = name.replace("fair_", "paper_")
    for optimizer in ("adam", "adam_matched_warmup"):
        fair_cfg = compose_train_config([f"experiment={name}", f"optimizer={optimizer}"], fast=False)
        paper_cfg = compose_train_config([f"experiment={paper}", f"optimizer={optimizer}"], fast=False)
        for cfg_ in (fair_cfg, paper_cfg):
            with open_dict(cfg_):
                for key in ("seed", "logger", "run_dir", "compare"):
                    if key in cfg_:
                        del cfg_[key]   # not pop(): run_dir only resolves inside a Hydra job
                del cfg_.optimizer["lr"]
                cfg_.dataset.pop("val_size", None)   # the paper configs hold none out
                del cfg_.trainer["monitor"]
        assert OmegaConf.to_container(fair_cfg, resolve=True) == OmegaConf.to_container(paper_cfg, resolve=True)
    warmup = compose_train_config([f"experiment={name}", "optimizer=adam_matched_warmup"], fast=False)
    assert warmup.optimizer.matched_switch_rate == 8e-5


TUNED_STUDIES = sorted(name for name in EXPERIMENTS  # the studies that `python -m dualadam.compare` runs
                       if "compare" in OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml"))


def test_the_gpu_scale_studies_are_tuned_studies():
    assert {*FAIR_STUDIES, "llm_qwen_gsm8k_tuned"} <= set(TUNED_STUDIES)


@pytest.mark.parametrize("name", TUNED_STUDIES)
def test_tuned_study_protocol_validates_with_equal_budgets_and_validation_choices(tmp_path, name):
    """The settings `python -m dualadam.compare experiment=<name>` checks before any work, and what the
    protocol requires of them: a search space per optimizer, N >= 5 confirmation seeds, a validation metric
    that the runs record and monitor."""
    protocol, _ = prepare([f"experiment={name}", f"compare.folder={tmp_path / 'compare'}"], CONFIG_DIR)
    assert not (tmp_path / "compare").exists(), "validating the settings started work"
    assert protocol.study == name and protocol.trials >= 1   # one K, so the same for every optimizer
    for optimizer in protocol.optimizers:
        assert load_search_space(CONFIG_DIR, optimizer, protocol.search_space_changes.get(optimizer))["lr"]
    assert len(protocol.confirm_seeds) >= 5 and protocol.tune_seed not in protocol.confirm_seeds
    assert protocol.metric.startswith("val/")
    cfg = compose_train_config([f"experiment={name}"], fast=False)
    assert cfg.trainer.monitor == protocol.metric
    assert cfg.dataset.get("val_size") is not None or cfg.dataset.get("val_fraction") is not None


# --------------------------------------------------------------------------------------------- the fixture


def save_config_and_train(cfg, run_dir: Path) -> None:
    """What a Hydra job does: save the composed config to ``.hydra/config.yaml``, then train."""
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    train(cfg)


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """Real runs of one study: a Hydra multirun of its experiment config (the optimizers, lr and seeds 0-2
    from the command line), 2 epochs each; plus a DualAdam run that diverges and an Adam run that fails (its
    dataset is missing)."""
    root = tmp_path_factory.mktemp("runs")
    command = [sys.executable, "-m", "dualadam.train", "-m", f"experiment={FIXTURE_STUDY}",
               f"optimizer={','.join(FIXTURE_OPTIMIZERS)}", "optimizer.lr=0.01", "seed=0,1,2", *FAST_OVERRIDES,
               *TINY_RUNS, *SHARPNESS, "trainer.eval_before_training=true", f"hydra.sweep.dir={root / 'sweep'}"]
    result = subprocess.run(command, cwd=root, env=quiet_env(root), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    base = [*FAST_OVERRIDES, "model.kwargs.width=4", "trainer.epochs=2", f"experiment={FIXTURE_STUDY}", "seed=0",
            "trainer.eval_before_training=true"]
    diverging = compose_train_config([*base, *TINY_RUNS, "optimizer=dualadam", "optimizer.lr=1e6"], fast=False)
    save_config_and_train(diverging, root / "diverged")
    missing = compose_train_config([*base, "optimizer=adam", "dataset=cifar10", f"dataset.root={root / 'none'}",
                                    "dataset.download=false", "++dataset.val_size=16"], fast=False)  # as TINY_RUNS
    with pytest.raises(Exception, match="cifar10"):
        save_config_and_train(missing, root / "failed")
    return root


def make_tables(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, in a process of its own."""
    result = subprocess.run([sys.executable, str(MAKE_TABLES), *args], cwd=cwd, env=quiet_env(cwd),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def make_tables_here(*args: str, cwd: Path, monkeypatch) -> None:
    """The same script's ``main`` in this process (no second torch import): for the repeat runs."""
    spec = importlib.util.spec_from_file_location("make_tables", MAKE_TABLES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(cwd)
    module.main(list(args))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


README_TEMPLATE = f"""# A project

Text before.

<!-- results:{FIXTURE_STUDY}:begin -->
stale numbers typed by hand
<!-- results:{FIXTURE_STUDY}:end -->

Text between.

<!-- verdicts:{FIXTURE_STUDY}:begin -->
stale verdicts typed by hand
<!-- verdicts:{FIXTURE_STUDY}:end -->

Text after.
"""


@pytest.fixture(scope="module")
def tables(run_root, tmp_path_factory) -> Path:
    """A work folder after `make tables` ran on the fixture: results/ and README.md."""
    work = tmp_path_factory.mktemp("work")
    (work / "README.md").write_text(README_TEMPLATE)
    result = make_tables("--committed", "--roots", str(run_root), str(work / "absent"), "--wandb", cwd=work)
    assert "absent: not found, skipped" in result.stdout
    assert "W&B skipped" in result.stdout, "offline, the W&B source must say it was skipped"
    return work


# ------------------------------------------------------------------------------------------------ the tables


class WandbRunStandIn:
    """The attributes of ``wandb.apis.public.Run`` that ``wandb_runs`` reads, filled with what the trainer sent
    to W&B (the resolved config, one history row per epoch, the summary). The real API needs the network."""

    def __init__(self, cfg, run_dir: Path):
        summary = json.loads((run_dir / "summary.json").read_text())
        self.id, self.group, self.state, self.commit = "abc123", cfg.logger.group, "finished", "f" * 40
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.summary_metrics = {**summary["final"], **{f"best/{k}": v for k, v in summary["best"].items()},
                                **{f"initial/{k}": v for k, v in (summary["initial"] or {}).items()},
                                "status": summary["status"], "_runtime": 1.0}
        self.history = [{**row, "_step": row[EPOCH]} for row in read_metrics(run_dir)]

    def scan_history(self):
        return iter(self.history)


def test_a_wandb_run_becomes_the_same_record_as_its_run_directory(tmp_path, isolated_wandb):
    cfg = compose_train_config([*FAST_OVERRIDES, *TINY_RUNS, f"experiment={FIXTURE_STUDY}", "optimizer=adam_matched_warmup",
                                "trainer.eval_before_training=true"], fast=False)
    save_config_and_train(cfg, tmp_path / "run")
    local = read_local_run(tmp_path / "run", "run")
    assert set(local.initial) >= {TEST_ACC, "test/loss", "train_eval/acc", "train_eval/loss"}
    remote = record_from_wandb_run(WandbRunStandIn(cfg, tmp_path / "run"), "entity/dualadam")
    assert remote.run == "wandb:entity/dualadam/abc123" and remote.source == "wandb"
    for field in ("study", "optimizer", "lr", "seed", "status", "epochs", "config_hash", "setting", "best",
                  "initial"):
        assert getattr(remote, field) == getattr(local, field), field
    assert remote.optimizer == "adam_matched_warmup", "the control is recognised without Hydra's choices"
    assert remote.final == local.final
    assert remote.epoch_rows == local.epoch_rows


@pytest.mark.slow
def test_wandb_source_with_credentials_but_no_service_skips_with_a_reason(isolated_wandb, monkeypatch):
    """A key is set but the W&B service cannot be reached (offline here) or rejects it: no runs, no failure."""
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    records, note = fetch_wandb_runs("dualadam", None, [FIXTURE_STUDY], timeout=10)
    assert records == [] and note.startswith("W&B skipped: could not read dualadam (")


def test_runs_csv_has_one_row_per_run_with_identity_and_outcome(tables, run_root):
    rows = read_rows(tables / "results" / FIXTURE_STUDY / "runs.csv")
    assert len(rows) == 8
    assert sorted(r["status"] for r in rows) == ["completed"] * 6 + ["diverged", "failed"]
    for row in rows:
        summary = json.loads((run_root / row["run"].split("/", 1)[1] / "summary.json").read_text())
        assert row["config_hash"] == summary["config_hash"] and row["commit"] == summary["git"]["commit"]
        assert row["study"] == FIXTURE_STUDY
    completed = [r for r in rows if r["status"] == "completed"]
    # The command line's sweep ran: every optimizer at every seed, at its one lr.
    assert sorted((r["optimizer"], r["seed"]) for r in completed) == [
        (o, s) for o in FIXTURE_OPTIMIZERS for s in (0, 1, 2)]
    assert {r["lr"] for r in completed} == {1e-2}
    epochs = read_rows(tables / "results" / FIXTURE_STUDY / "epochs.csv")
    assert len([e for e in epochs if e["run"] in {r["run"] for r in completed}]) == 6 * 2


def test_means_and_sample_stds_match_a_hand_computation(tables, run_root):
    """For each optimizer: the mean and the sample std (n - 1) of the three seeds' last-epoch numbers, read
    straight from the runs' metrics.jsonl."""
    rows = read_rows(tables / "results" / FIXTURE_STUDY / "runs.csv")
    table = build_study_table(FIXTURE_STUDY, rows)
    table_md = (tables / "results" / FIXTURE_STUDY / "table.md").read_text()
    for optimizer in FIXTURE_OPTIMIZERS:
        runs = [r["run"] for r in rows if r["optimizer"] == optimizer and r["status"] == "completed"]
        last = [read_metrics(run_root / run.split("/", 1)[1])[-1] for run in runs]
        group = next(g for g in table.groups if g.optimizer == optimizer and g.averaged)
        assert len(runs) == 3 and len(group.averaged) == 3
        summaries = [json.loads((run_root / run.split("/", 1)[1] / "summary.json").read_text()) for run in runs]
        assert [s["final"][TEST_ACC] for s in summaries] == [row[TEST_ACC] for row in last]
        before = [s["initial"][TEST_ACC] for s in summaries]   # the untrained models' accuracy, per seed
        assert group.stats[f"initial/{TEST_ACC}"].mean == pytest.approx(sum(before) / 3, abs=1e-12)
        stat = group.stats[f"initial/{TEST_ACC}"]
        row_text = next(line for line in table_md.splitlines()
                        if line.startswith(f"| {optimizer_name(optimizer)} |") and "| 3 |" in line)
        assert f"| 3 | {stat.mean:.2f} ± {stat.std:.2f} |" in row_text   # the first column after n
        for metric in (TEST_ACC, GAP_ACC, "sharpness/hessian_trace"):
            a, b, c = (summary["final"][metric] for summary in summaries)
            mean = (a + b + c) / 3
            std = math.sqrt(((a - mean) ** 2 + (b - mean) ** 2 + (c - mean) ** 2) / (3 - 1))
            stat = group.stats[f"final/{metric}"]
            assert stat.n == 3 and stat.mean == pytest.approx(mean, abs=1e-12)
            assert stat.std == pytest.approx(std, abs=1e-12)
            spec = ".3g" if metric.startswith("sharpness/") else ".2f"
            assert f"{mean:{spec}} ± {std:{spec}}" in table_md


def test_failed_and_diverged_runs_are_listed_and_counted_not_averaged(tables):
    table_md = (tables / "results" / FIXTURE_STUDY / "table.md").read_text()
    assert "**Not averaged: 2 of 8 runs** (1 diverged, 1 failed):" in table_md
    assert "- DualAdam, lr 1e+06, dataset.name synthetic, seed 0: diverged (`" in table_md
    assert "- Adam, lr 0.01, dataset.name cifar10, seed 0: failed (`" in table_md
    # The study varies lr (DualAdam) and the dataset (Adam) within an optimizer: both become columns, and each
    # optimizer's best setting gets a table of its own.
    assert "| optimizer | lr | dataset.name | n |" in table_md
    assert "Each optimizer at its best lr, dataset.name" in table_md
    assert "| DualAdam | 1e+06 | synthetic | 0 | – | – | – | – | – | – | – | – | 1 (1 diverged) |" in table_md
    # The runs measured their sharpness (analysis.*, which does not split groups): its columns are shown.
    assert "| final gap (pp) | top Hessian eigenvalue | Hessian trace | not averaged |" in table_md
    tex = (tables / "results" / FIXTURE_STUDY / "table.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\pm" in tex and "DualAdam" in tex


def final_test_acc_by_seed(rows: list[dict], run_root: Path, optimizer: str) -> dict[int, float]:
    """The optimizer's completed runs' final test accuracy per seed, read from their summary.json."""
    runs = [r for r in rows if r["optimizer"] == optimizer and r["status"] == "completed"]
    return {r["seed"]: json.loads((run_root / r["run"].split("/", 1)[1] / "summary.json").read_text())["final"][TEST_ACC]
            for r in runs}


def test_table_gives_the_t_interval_of_each_mean_and_the_seed_paired_verdict(tables, run_root):
    """The CI column and the DualAdam-vs-Adam line, against scipy on the runs' own summary.json numbers."""
    rows = read_rows(tables / "results" / FIXTURE_STUDY / "runs.csv")
    table_md = (tables / "results" / FIXTURE_STUDY / "table.md").read_text()
    assert "| final test acc (%) | final test acc 95% CI | best test acc (%) |" in table_md
    accuracy = {o: final_test_acc_by_seed(rows, run_root, o) for o in FIXTURE_OPTIMIZERS}
    for optimizer, by_seed in accuracy.items():
        values, mean = list(by_seed.values()), statistics.fmean(by_seed.values())
        # Tiny runs can tie on every seed (a few test images): the interval is then the mean itself.
        low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=scipy_stats.sem(values)) \
            if statistics.stdev(values) > 0 else (mean, mean)
        row_text = next(line for line in table_md.splitlines()
                        if line.startswith(f"| {optimizer_name(optimizer)} |") and "| 3 |" in line)
        assert f"± {statistics.stdev(values):.2f} | [{low:.2f}, {high:.2f}] |" in row_text
    seeds = sorted(accuracy["dualadam"])
    assert seeds == [0, 1, 2] == sorted(accuracy["adam"])
    paired = scipy_stats.ttest_rel([accuracy["dualadam"][s] for s in seeds], [accuracy["adam"][s] for s in seeds])
    interval = paired.confidence_interval(0.95)
    differences = [accuracy["dualadam"][s] - accuracy["adam"][s] for s in seeds]
    line = next(line for line in table_md.splitlines() if line.startswith("- DualAdam vs Adam: "))
    signed = [format(v, "+.2f").replace("-", "−") for v in (statistics.fmean(differences), *interval)]
    assert f"({signed[0]} pp, 95% CI [{signed[1]}, {signed[2]}], n=3 pairs, " in line
    word = line.removeprefix("- DualAdam vs Adam: ").split(" (")[0]
    assert word in ("better", "worse", "no detectable difference")
    # One comparison: Holm leaves its p alone; with 3 pairs or fewer the exact Wilcoxon test (smallest p
    # 2 / 2**k for k nonzero differences; tiny runs can tie on a seed) can never reject.
    assert f"Holm p={format(paired.pvalue, '.2g')}" in line or paired.pvalue < 0.001
    nonzero = sum(abs(d) > 1e-9 for d in differences)
    assert (f"The Wilcoxon test cannot reject at p<0.05 with fewer than 6 nonzero differences, whatever the data "
            f"(with {nonzero} its smallest p is {2 / 2 ** nonzero:.2g}). So it cannot for any comparison of this "
            "table") in table_md


def test_a_reference_no_study_ran_is_refused_before_any_table_is_written(tables, tmp_path, monkeypatch):
    work = tmp_path / "copy"
    shutil.copytree(tables, work)
    before = snapshot(work)
    with pytest.raises(SystemExit, match="--reference adamx: no study here has runs of that optimizer; use one of "
                                         "the optimizer labels of these studies: adam, dualadam"):
        make_tables_here("--committed", "--no-collect", "--reference", "adamx", cwd=work, monkeypatch=monkeypatch)
    assert snapshot(work) == before


def test_a_copied_run_directory_is_listed_as_a_duplicate_not_averaged_twice(run_root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    original = sorted((run_root / "sweep").glob("adam-*"))[0]
    shutil.copytree(original, runs / "first")
    shutil.copytree(original, runs / "copy")
    make_tables_here("--committed", "--roots", str(runs), "--readme", str(tmp_path / "none.md"), cwd=tmp_path,
                     monkeypatch=monkeypatch)
    table_md = (tmp_path / "results" / FIXTURE_STUDY / "table.md").read_text()
    assert "**Not averaged: 1 of 2 runs** (1 duplicate):" in table_md
    assert ": duplicate of runs/first (`runs/copy`)" in table_md
    assert "| Adam | 1 |" in table_md


def test_a_seed_rerun_is_listed_as_a_duplicate_not_averaged_twice(tables, run_root, tmp_path, monkeypatch):
    """The same experiment trained again, with settings that cannot change a result changed (another number
    of loader workers, another evaluation batch size), and collected into the committed results: one run per
    (optimizer, setting, seed)."""
    work = tmp_path / "clone"
    for name, data in snapshot(tables).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    original = next(p for p in sorted((run_root / "sweep").glob("adam-*"))
                    if json.loads((p / "config.json").read_text())["config"]["seed"] == 0)
    cfg = OmegaConf.create(json.loads((original / "config.json").read_text())["config"])
    with open_dict(cfg):
        cfg.trainer.num_workers, cfg.trainer.eval_batch_size = 1, 16
        cfg.run_dir = str(tmp_path / "rerun" / "adam-seed0-again")
    assert train(cfg)["status"] == "completed"
    make_tables_here("--committed", "--roots", str(tmp_path / "rerun"), "--readme", str(tmp_path / "none.md"),
                     cwd=work, monkeypatch=monkeypatch)
    table_md = (work / "results" / FIXTURE_STUDY / "table.md").read_text()
    assert "**Not averaged: 3 of 9 runs** (1 diverged, 1 duplicate, 1 failed):" in table_md
    assert re.search(r"- Adam, lr 0\.01, dataset\.name synthetic, seed 0: duplicate of ", table_md)
    group = next(g for g in load_study(work / "results" / FIXTURE_STUDY).table.groups
                 if g.optimizer == "adam" and g.averaged)
    assert sorted(r["seed"] for r in group.averaged) == [0, 1, 2]


def test_an_ad_hoc_study_goes_to_an_output_folder_not_the_committed_results(run_root, tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text(README_TEMPLATE)
    make_tables_here("--roots", str(run_root), cwd=tmp_path, monkeypatch=monkeypatch)
    assert (tmp_path / "outputs" / "results" / FIXTURE_STUDY / "table.md").is_file()
    assert not (tmp_path / "results").exists()
    assert (tmp_path / "README.md").read_text() == README_TEMPLATE   # README blocks only with --committed


def test_tables_show_each_runs_code_and_flag_uncommitted_code(tables, run_root):
    rows = read_rows(tables / "results" / FIXTURE_STUDY / "runs.csv")
    summaries = {r["run"]: json.loads((run_root / r["run"].split("/", 1)[1] / "summary.json").read_text())
                 for r in rows}
    for row in rows:
        attempts = summaries[row["run"]]["attempts"]
        assert row["commit"] == attempts[0]["commit"] and row["dirty"] == attempts[0]["dirty"]
    table_md = (tables / "results" / FIXTURE_STUDY / "table.md").read_text()
    dirty = sum(1 for r in rows if r["dirty"])
    assert "Code of the runs: `" in table_md
    assert (f"**{dirty} of {len(rows)} runs ran uncommitted code**" in table_md) == (dirty > 0)


def test_tables_and_plots_are_byte_identical_when_made_again(tables, run_root, tmp_path, monkeypatch):
    before = snapshot(tables)
    make_tables("--committed", "--roots", str(run_root), cwd=tables)              # again, over its own output
    assert snapshot(tables) == before
    (tmp_path / "README.md").write_text(README_TEMPLATE)
    make_tables_here("--committed", "--roots", str(run_root), cwd=tmp_path, monkeypatch=monkeypatch)  # elsewhere
    assert snapshot(tmp_path) == before
    assert {"test_acc.png", "gap_acc.png"} <= {p.name for p in (tables / "results" / FIXTURE_STUDY).iterdir()}
    assert b"matplotlib" not in before[f"results/{FIXTURE_STUDY}/test_acc.png"]


def test_tables_rebuild_from_the_csvs_alone(tables, tmp_path, monkeypatch):
    """No run directories at all (a fresh clone): the committed CSVs give the same tables."""
    work = tmp_path / "clone"
    for name, data in snapshot(tables).items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    make_tables_here("--committed", "--roots", str(tmp_path / "no-runs-here"), cwd=work, monkeypatch=monkeypatch)
    assert snapshot(work) == snapshot(tables)


def test_readme_block_is_what_make_tables_writes(tables):
    readme = (tables / "README.md").read_text()
    block = read_block(readme, f"results:{FIXTURE_STUDY}")
    study = load_study(tables / "results" / FIXTURE_STUDY)
    assert block == study_markdown(study, tables).strip("\n")
    assert "stale numbers" not in readme and readme.startswith("# A project\n\nText before.\n")
    assert readme.endswith("Text after.\n")
    table_lines = [line for line in (tables / "results" / FIXTURE_STUDY / "table.md").read_text().splitlines()
                   if line.startswith("|")]
    assert table_lines and all(line in block.splitlines() for line in table_lines)
    assert f"(results/{FIXTURE_STUDY}/test_acc.png)" in block


def test_verdicts_block_holds_the_tables_verdict_lines_alone(tables):
    readme = (tables / "README.md").read_text()
    block = read_block(readme, f"verdicts:{FIXTURE_STUDY}")
    assert "stale verdicts" not in readme and "Text between." in readme and readme.endswith("Text after.\n")
    table = (tables / "results" / FIXTURE_STUDY / "table.md").read_text().splitlines()
    verdicts = ("| better |", "| worse |", "| no detectable difference |", "| not compared |")
    comparisons = [line for line in table if line.startswith("| ") and line.endswith(verdicts)]
    bullets = [line for line in block.splitlines() if line.startswith("- ")]
    # one line per comparison of the table, each word for word one of the table's verdict lines
    assert comparisons and len(bullets) == len(comparisons) and all(line in table for line in bullets)
    assert [b.split(":")[0] for b in bullets] == [f"- {c.split('|')[1].strip()}" for c in comparisons]
    assert "|" not in block and f"(results/{FIXTURE_STUDY}/runs.csv)" in block


def test_epoch_curves_cover_every_epoch(tables):
    epochs = read_rows(tables / "results" / FIXTURE_STUDY / "epochs.csv")
    completed = {r["run"] for r in read_rows(tables / "results" / FIXTURE_STUDY / "runs.csv")
                 if r["status"] == "completed"}
    assert sorted({e[EPOCH] for e in epochs if e["run"] in completed}) == [1, 2]


REPO_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REPO_STUDY_BLOCKS = [(doc, kind, study) for doc in REPO_DOCS
                     for kind, study in re.findall(r"<!-- (results|verdicts):([^\s>]+):begin -->", doc.read_text())]


@pytest.mark.skipif(not REPO_STUDY_BLOCKS, reason="README.md and docs/ have no study blocks yet")
@pytest.mark.parametrize(("doc", "kind", "study"), REPO_STUDY_BLOCKS,
                         ids=[f"{d.relative_to(REPO)}:{k}:{s}" for d, k, s in REPO_STUDY_BLOCKS])
def test_repository_doc_blocks_match_the_committed_results(doc, kind, study):
    """The numbers of README.md and docs/ are the committed results/<study>/ CSVs, rendered; never typed by
    hand. A study not yet run holds the fixed pending line, which has no number."""
    folder = REPO / "results" / study
    block = read_block(doc.read_text(), f"{kind}:{study}")
    if not (folder / "runs.csv").is_file():
        assert block == PENDING_BLOCK.format(study=study), f"{doc.name} has a {kind} block for {study} but no " \
            f"{folder}/runs.csv: leave the pending line there until `make tables` writes the block"
        return
    render = study_markdown if kind == "results" else study_verdicts
    assert block == render(load_study(folder), doc.parent).strip("\n"), "run `make tables`"


# ------------------------------------------------------------------------------------------ the cost estimate


def load_cost_module():
    spec = importlib.util.spec_from_file_location("paper_cost", REPO / "experiments" / "paper" / "cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cost_counts_training_flops_and_sweep_jobs():
    cost = load_cost_module()
    # Two linear layers on 3x2x2 images. Forward: 2 * (12 * 5 + 5 * 3) FLOPs. Backward: both weight gradients
    # (the same again) and the input gradient of the second layer only (the images need none): 2 * 5 * 3.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    forward = 2 * (12 * 5 + 5 * 3)
    assert cost.flops_per_image(model, 2, train=False) == forward
    assert cost.flops_per_image(model, 2, train=True) == 2 * forward + 2 * 5 * 3
    assert cost.sweep_size({"optimizer": "adam,dualadam,invadam", "optimizer.lr": "1e-3,1e-2", "seed": "0"}) == 6
    # A tuned study: K trials and N confirmation seeds per optimizer; otherwise the sweep.
    tuned = OmegaConf.create({"compare": {"optimizers": ["adam", "sgd"], "trials": 3, "confirm_seeds": [1, 2, 3, 4, 5]}})
    assert cost.run_count(tuned) == 2 * (3 + 5)
    swept = OmegaConf.create({"hydra": {"sweeper": {"params": {"optimizer": "adam,sgd", "seed": "0,1,2"}}}})
    assert cost.run_count(swept) == 6


@pytest.mark.slow
def test_paper_cost_block_is_current():
    """experiments/paper/README.md's cost table is what `make paper-cost` writes for today's configs."""
    cost = load_cost_module()
    block = read_block((REPO / "experiments" / "paper" / "README.md").read_text(), "paper-cost")
    assert block == cost.cost_table(cost.all_costs()).strip("\n"), "run `make paper-cost`"


def test_the_tuned_llm_study_is_costed_with_its_tuning_and_confirmation_runs():
    """llm_qwen_gsm8k_tuned: 4 optimizers x (8 trials + 5 seeds); a tuning run generates for 16 test prompts,
    a confirmation run for all 1,319, so it costs more; the study's total is the sum of both kinds."""
    cost = load_cost_module()
    study = cost.llm_study_cost("llm_qwen_gsm8k_tuned")
    assert study.runs == 4 * (8 + 5) and study.epochs == 3
    cfg = compose_train_config(["experiment=llm_qwen_gsm8k_tuned"], fast=False)
    tune = compose_train_config(["experiment=llm_qwen_gsm8k_tuned", *cfg.compare.tune_overrides], fast=False)
    params = cost.LLM_PARAMS[cfg.model.name]
    tune_h, confirm_h = cost._llm_run_hours(tune, params), cost._llm_run_hours(cfg, params)
    assert tune_h < confirm_h
    assert study.total_hours == pytest.approx(32 * tune_h + 20 * confirm_h)
    # Generation: 4 evaluations (before training, then 3 epochs) of ceil(500/64) + ceil(500/64) + ceil(1319/64)
    # batches, 256 decode steps each.
    decode_h = 4 * (8 + 8 + 21) * 256 * cost.DECODE_STEP_S / 3600
    assert confirm_h > decode_h and confirm_h - decode_h < decode_h   # generation dominates
