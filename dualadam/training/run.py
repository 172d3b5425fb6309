"""``train(cfg) -> summary``: one complete run, from a resolved config to the files in its run directory.

Whatever happens, the W&B run is finished, a failure leaves ``error.txt`` and a ``summary.json`` with
``status: failed``, and the last line printed says where the outputs are.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dualadam.training import outputs as out
from dualadam.training.optimizers import build_optimizer, warmup_steps
from dualadam.training.runtime import Runtime, progress_enabled, resolve_runtime, seed_everything
from dualadam.training.schedulers import TrainingLength, build_lr_scheduler
from dualadam.training.tasks import build_task
from dualadam.training.trainer import Trainer, TrainState
from dualadam.training.validation import validate_config
from dualadam.training.wandb_logger import WandbLogger

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, runtime: Runtime, sinks) -> Trainer:
    task = build_task(cfg, runtime)
    optimizer = build_optimizer(cfg.optimizer, task.model)
    length = TrainingLength(steps_per_epoch=len(task.train_loader), epochs=cfg.trainer.epochs)
    scheduler = build_lr_scheduler(cfg.scheduler, optimizer, length, warmup_steps(cfg.optimizer))
    return Trainer(task, optimizer, scheduler, runtime, epochs=cfg.trainer.epochs, monitor=cfg.trainer.monitor,
                   progress=progress_enabled(cfg.trainer.progress), sinks=sinks)


def summarize(cfg: DictConfig, state: TrainState, *, status: str, runtime: Runtime | None,
              wandb: WandbLogger, seconds: float, run_dir: Path) -> dict:
    return {
        "status": status,
        "epochs_completed": state.epochs_completed,
        "epochs": cfg.trainer.epochs,
        "final": state.last,
        "best": state.best,
        "monitor": cfg.trainer.monitor,
        "config_hash": out.config_hash(cfg),
        "git": out.git_commit(),
        "versions": out.package_versions(),
        "hardware": out.hardware(runtime.device) if runtime else None,
        "precision": runtime.precision if runtime else None,
        "wandb": {"mode": wandb.mode, "run_id": wandb.run_id, "dir": wandb.files_dir},
        "run_dir": str(run_dir),
        "seconds": seconds,
    }


def train(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says and return the summary also written to ``<run_dir>/summary.json``."""
    validate_config(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    files = out.RunOutputs(run_dir)
    wandb = WandbLogger(cfg.logger, run_dir, config=OmegaConf.to_container(cfg, resolve=True))
    state, runtime, status = TrainState(), None, "failed"
    start = time.perf_counter()
    try:
        seed_everything(cfg.seed, deterministic=cfg.trainer.deterministic)
        runtime = resolve_runtime(cfg.trainer)
        trainer = build_trainer(cfg, runtime, sinks=[files, wandb])
        wandb.start()
        state.wandb_run_id = wandb.run_id
        trainer.fit(state)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception:
        files.write_error()
        raise
    finally:
        summary = summarize(cfg, state, status=status, runtime=runtime, wandb=wandb,
                            seconds=time.perf_counter() - start, run_dir=run_dir)
        if state.best is not None:
            wandb.update_summary({f"best/{key}": value for key, value in state.best.items()})
        wandb.finish(exit_code=0 if status == "completed" else 1)
        files.write_summary(summary)
        log.info("Run %s: %d/%d epochs. Outputs in %s", status, state.epochs_completed, cfg.trainer.epochs,
                 run_dir)
        print(f"[dualadam] run {status}; outputs in {run_dir}")
    return summary
