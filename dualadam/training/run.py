"""``train(cfg, task) -> summary``: one complete run, from a resolved config to the files in its run directory.

``task`` is the ``TaskDefinition`` of ``cfg.task``, which the caller picks from the task registry (the core
imports no task): ``dualadam.train.train(cfg)`` does that, and is what tests and ``dualadam.compare`` call.

Whatever happens, the W&B run is finished, a failure leaves ``error.txt`` and a ``summary.json`` with
``status: failed``, and the last line printed says where the outputs are.

A run directory is reused (``run_directory``): a finished run there is skipped, an unfinished one resumes from
its last checkpoint (``resume``). ``status`` is ``running`` while training, then ``completed``, ``diverged``
(with ``diverged_at_step``), ``preempted`` (a signal; checkpoint saved, with ``preempted``), ``failed`` or
``interrupted`` (Ctrl-C). With several processes (``distributed``), rank 0 alone writes.

``diverged`` also covers an update that left non-finite weights or evaluation losses (``guard``): a run never
ends ``completed`` with a non-finite final metric, in ``summary.json`` or in W&B, and a relaunched sweep skips
it as finished. At the end a run prints its status, its final and best rows and its folder.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dualadam.training import outputs as out
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.distributed import (
    agreed_steps_per_epoch,
    broadcast_object,
    end_process_group,
    is_main_process,
    per_rank_config,
    placement_from_environment,
    replicas_identical,
    start_process_group,
)
from dualadam.training.final_analysis import final_sharpness
from dualadam.training.guard import Diverged, TrainingGuard
from dualadam.training.metrics import selection_split
from dualadam.training.optimizers import build_optimizer, warmup_steps
from dualadam.training.preemption import Preempted, PreemptionFlag
from dualadam.training.progress_log import describe_ending
from dualadam.training.recipe import Recipe, effective_batch_size
from dualadam.training.resume import Checkpointer
from dualadam.training.run_directory import (
    CHECKPOINT_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    RunInProgress,
    RunLock,
    RunStart,
    plan_run_start,
)
from dualadam.training.runtime import Runtime, progress_enabled, resolve_runtime, seed_everything
from dualadam.training.schedulers import TrainingLength, build_lr_scheduler
from dualadam.training.task import TaskDefinition
from dualadam.training.trainer import Trainer, TrainState
from dualadam.training.validation import validate_config
from dualadam.training.wandb_logger import WandbLogger

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, runtime: Runtime, definition: TaskDefinition, sinks=(), *,
                  guard: TrainingGuard | None = None, checkpointer: Checkpointer | None = None) -> Trainer:
    """Tasks see their rank's share of the global ``trainer.batch_size``; all ranks take the same steps. The
    schedule counts optimizer steps: one per accumulation window (``recipe``)."""
    task = definition.build(per_rank_config(cfg, runtime), runtime)
    optimizer = build_optimizer(cfg.optimizer, task.model, fused=runtime.fused_optimizer)
    steps = agreed_steps_per_epoch(len(task.train_loader), runtime)
    recipe = Recipe.from_config(cfg.trainer)
    length = TrainingLength(steps_per_epoch=recipe.optimizer_steps_per_epoch(steps), epochs=cfg.trainer.epochs)
    scheduler = build_lr_scheduler(cfg.scheduler, optimizer, length, warmup_steps(cfg.optimizer))
    return Trainer(task, optimizer, scheduler, runtime, epochs=cfg.trainer.epochs, monitor=cfg.trainer.monitor,
                   progress=progress_enabled(cfg.trainer.progress) and is_main_process(runtime), sinks=sinks,
                   guard=guard, checkpointer=checkpointer, steps_per_epoch=steps,
                   sync_batchnorm=bool(cfg.trainer.get("sync_batchnorm", True)), recipe=recipe)


def summarize(cfg: DictConfig, state: TrainState, *, status: str, runtime: Runtime | None,
              wandb: WandbLogger, seconds: float, run_dir: Path, ending: dict | None = None) -> dict:
    """``ending``: how training stopped (``diverged_at_step``, ``diverged``: what was not finite, ``preempted``)
    and ``replicas_identical``."""
    ending = {"diverged_at_step": None, "diverged": None, "preempted": None, "replicas_identical": None,
              **(ending or {})}
    return {
        "status": status,
        "epochs_completed": state.epochs_completed,
        "epochs": cfg.trainer.epochs,
        "final": None if state.last is None else {**state.last, **state.final_measurements},
        "best": state.best,
        "initial": state.initial,   # trainer.eval_before_training: the evaluation before the first step
        "monitor": cfg.trainer.monitor,
        "best_selected_on": selection_split(cfg.trainer.monitor),  # "val"; "test" is the paper protocol
        "config_hash": out.config_hash(cfg),
        "git": out.code_version(),   # this attempt's code; "attempts" lists every attempt's
        "versions": out.package_versions(),
        "hardware": out.hardware(runtime.device) if runtime else None,
        "precision": runtime.precision if runtime else None,
        "wandb": {"mode": wandb.mode, "run_id": wandb.run_id, "dir": wandb.files_dir},
        "run_dir": str(run_dir),
        "seconds": seconds,  # this attempt's wall time (a resumed run had earlier attempts)
        "world_size": runtime.world_size if runtime else 1,
        "effective_batch_size": effective_batch_size(cfg.trainer),  # samples per optimizer step, all ranks
        "host": os.uname().nodename,
        "pid": os.getpid(),
        **ending,
    }


def train(cfg: DictConfig, task: TaskDefinition) -> dict:
    """Train as ``cfg`` says, the task ``task``, and return the summary also written to
    ``<run_dir>/summary.json``."""
    out.git_commit()   # read now and kept: the code version this process runs (see git_commit)
    validate_config(cfg, task)
    run_dir = Path(cfg.run_dir).resolve()
    runtime = start_process_group(placement_from_environment(), resolve_runtime(cfg.trainer))
    try:
        with RunLock(run_dir, enabled=is_main_process(runtime)):
            start = agree_on_start(run_dir, cfg, runtime)
            if start.action == "skip":
                if is_main_process(runtime):
                    print(f"[dualadam] run already {start.previous['status']}; skipped. Outputs in {run_dir} "
                          "(trainer.resume=false trains it again)")
                return start.previous
            return run_attempt(cfg, run_dir, runtime, start, task)
    finally:
        end_process_group()


def agree_on_start(run_dir: Path, cfg: DictConfig, runtime: Runtime) -> RunStart:
    """Rank 0 inspects the run directory; the other ranks follow its decision and read the same checkpoint."""
    resume = bool(cfg.trainer.get("resume", True))
    if runtime.world_size == 1:
        return plan_run_start(run_dir, cfg, resume=resume)
    start, outcome = None, None
    if is_main_process(runtime):
        try:
            start = plan_run_start(run_dir, cfg, resume=resume)
            outcome = (start.action, start.previous, start.load_error, start.checkpoint_file, start.rows)
        except Exception as error:  # raised on every rank below, instead of leaving them waiting
            outcome = error
    outcome = broadcast_object(outcome, runtime)
    if isinstance(outcome, Exception):
        raise outcome
    if start is not None:
        return start
    action, previous, load_error, checkpoint_file, rows = outcome
    checkpoint = load_checkpoint(checkpoint_file) if action == "resume" else None
    return RunStart(action, previous=previous, checkpoint=checkpoint, load_error=load_error,
                    checkpoint_file=checkpoint_file, rows=rows)


def hydra_choices() -> dict:
    """The config group choices of the Hydra job running now (``optimizer: adam_matched_warmup``), if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in OmegaConf.to_container(HydraConfig.get().runtime.choices).items() if v is not None}


def earlier_attempts(previous: dict | None) -> list[dict]:
    """The attempts ``summary.json`` lists; a summary from before attempts were listed counts as one."""
    if previous is None:
        return []
    if previous.get("attempts"):
        return list(previous["attempts"])
    return [{"attempt": 1, **(previous.get("git") or {"commit": None, "dirty": None}), "diff": None,
             "versions": previous.get("versions"), "host": previous.get("host")}]


class Attempt:
    """One attempt at a run: trains from ``start`` (scratch or a checkpoint) and writes what happened.

    Rank 0 alone writes files and W&B; every rank trains."""

    def __init__(self, cfg: DictConfig, run_dir: Path, runtime: Runtime, start: RunStart, task: TaskDefinition):
        self.cfg, self.run_dir, self.runtime, self.start, self.task = cfg, run_dir, runtime, start, task
        self.main = is_main_process(runtime)
        self.files = out.RunOutputs(run_dir) if self.main else None
        under_wandb_agent = bool(os.environ.get("WANDB_SWEEP_ID"))  # the agent names the W&B run itself
        self.wandb = WandbLogger(cfg.logger, run_dir, config=OmegaConf.to_container(cfg, resolve=True),
                                 run_id=None if under_wandb_agent else start.wandb_run_id)
        self.state, self.status, self.ending = TrainState(), "failed", {}
        self.began = time.perf_counter()
        self.attempts = self.record_attempt() if self.main else []

    def record_attempt(self) -> list[dict]:
        """This attempt's code (commit, dirty flag, the diff itself when dirty) and versions, after the earlier
        attempts'; on the first attempt also ``config.json``, the record of what the run trains."""
        out.write_run_config(self.run_dir, out.run_config_record(self.cfg, hydra_choices()))
        attempts = earlier_attempts(self.start.previous)
        diffs = (int(p.stem.split("-")[1]) for p in self.run_dir.glob("attempt-*.diff") if p.stem[8:].isdigit())
        number = max([*(a.get("attempt") or 0 for a in attempts), *diffs], default=0) + 1  # never reuse a diff
        code = out.git_commit() or {"commit": None, "dirty": None, "diff": None}
        diff = self.files.write_diff(number, code["diff"]) if code.get("diff") else None
        return [*attempts, {"attempt": number, "commit": code["commit"], "dirty": code["dirty"], "diff": diff,
                            "versions": out.package_versions(), "host": os.uname().nodename,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]

    def summary(self, status: str) -> dict:
        summary = summarize(self.cfg, self.state, status=status, runtime=self.runtime, wandb=self.wandb,
                            seconds=time.perf_counter() - self.began, run_dir=self.run_dir, ending=self.ending)
        return {**summary, "attempts": self.attempts}

    def train(self, preemption: PreemptionFlag) -> None:
        cfg, runtime = self.cfg, self.runtime
        if self.start.load_error is not None:
            raise self.start.load_error
        seed_everything(cfg.seed, deterministic=cfg.trainer.deterministic)
        checkpointer = Checkpointer(self.run_dir / CHECKPOINT_FILE, runtime, cfg,
                                    previous=self.run_dir / PREVIOUS_CHECKPOINT_FILE)
        guard = TrainingGuard(runtime, check_every=int(cfg.trainer.get("check_every", 50)), preemption=preemption)
        trainer = build_trainer(cfg, runtime, self.task, [self.files, self.wandb] if self.main else [],
                                guard=guard, checkpointer=checkpointer)
        if self.start.checkpoint is not None:
            self.state = checkpointer.restore(trainer, self.start.checkpoint)
        if self.start.rows is not None:
            checkpointer.rows = list(self.start.rows)   # metrics.jsonl's rows, as plan_run_start verified them
        if self.main:
            self.wandb.start()
            self.state.wandb_run_id = self.wandb.run_id
            self.wandb.update_summary({"effective_batch_size": effective_batch_size(cfg.trainer)})
            self.files.write_summary(self.summary("running"))
        if cfg.trainer.get("eval_before_training") and self.state.initial is None:
            self.state.initial = trainer.evaluate_before_training()
            self.wandb.update_summary({f"initial/{key}": value for key, value in self.state.initial.items()})
            log.info("Before training: %s", ", ".join(f"{k} {v:.4g}" for k, v in self.state.initial.items()))
        trainer.fit(self.state)
        if cfg.get("analysis") and cfg.analysis.sharpness:
            self.state.final_measurements = final_sharpness(trainer.task, cfg.analysis)
            self.wandb.update_summary(self.state.final_measurements)
        if runtime.world_size > 1:
            self.ending["replicas_identical"] = replicas_identical(trainer.task.model, runtime)

    def finish(self) -> dict:
        summary = self.summary(self.status)
        if not self.main:
            return summary
        if self.state.best is not None:
            self.wandb.update_summary({f"best/{key}": value for key, value in self.state.best.items()})
        self.wandb.update_summary({"status": self.status, "diverged_at_step": summary["diverged_at_step"],
                                   "diverged": summary["diverged"]})
        self.wandb.finish(exit_code=0 if self.status == "completed" else 1)
        self.files.write_summary(summary)
        for line in describe_ending(summary):
            log.info(line)
        print(f"[dualadam] run {self.status}; outputs in {self.run_dir}", flush=True)
        return summary


def run_attempt(cfg: DictConfig, run_dir: Path, runtime: Runtime, start: RunStart, task: TaskDefinition) -> dict:
    """Train until done, diverged, preempted or failed; the summary says which."""
    attempt = Attempt(cfg, run_dir, runtime, start, task)
    with PreemptionFlag() as preemption:
        try:
            attempt.train(preemption)
            attempt.status = "completed"
        except Preempted as stop:
            attempt.status = "preempted"
            attempt.ending["preempted"] = {"signal": signal.Signals(stop.signum).name if stop.signum else None,
                                           "step": stop.step}
        except Diverged as stop:
            attempt.status, attempt.ending["diverged_at_step"] = "diverged", stop.step
            attempt.ending["diverged"] = f"non-finite {stop.what}"
            log.error("Diverged: %s", stop)
        except KeyboardInterrupt:
            attempt.status = "interrupted"
            raise
        except Exception:
            if attempt.main:
                attempt.files.write_error()
            raise
        finally:
            summary = attempt.finish()
    return summary


def record_failed_start(cfg: DictConfig) -> None:
    """For a sweep job rejected before its run began (a bad config): the current exception in ``error.txt``
    and a ``failed`` summary, so the sweep's directories tell every job's fate. Only in a directory that holds
    no run yet, and under the run's lock: a rejected launch never changes an existing run's records (a finished
    sweep relaunched with stricter validation keeps every completed summary)."""
    run_dir = Path(cfg.run_dir).resolve()
    if _holds_a_run(run_dir):
        log.error("%s holds an earlier run's records; they are left as they are", run_dir)
        return
    try:
        with RunLock(run_dir):
            if _holds_a_run(run_dir):
                return
            files = out.RunOutputs(run_dir)
            files.write_error()
            wandb = WandbLogger(cfg.logger, run_dir, config={})
            files.write_summary(summarize(cfg, TrainState(), status="failed", runtime=None, wandb=wandb,
                                          seconds=0.0, run_dir=run_dir))
    except RunInProgress:
        log.error("%s is being trained by another process; its records are left as they are", run_dir)


def _holds_a_run(run_dir: Path) -> bool:
    names = (out.SUMMARY_FILE, out.METRICS_FILE, out.CONFIG_FILE, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)
    return any((run_dir / name).exists() for name in names)
