"""What a checkpoint holds, and putting a trainer back exactly where it was.

``last.pt`` (``checkpoint.save_checkpoint``: atomic, SHA-256-verified) is written at the end of every epoch and
when a preemption signal stops training mid-epoch (after an optimizer step, so never within a gradient
accumulation window); the one it replaces is kept as ``previous.pt``. It holds everything the next step depends on:

- the model (with LoRA only the adapters: the task's ``checkpoint_state``), the optimizer (DualAdam/InvAdam
  keep their step count and mixing weight in their param groups), the LR scheduler (its step count) and the
  grad scaler;
- every RNG state (python, numpy, torch CPU, CUDA) of every rank;
- the data position: ``train_state.epochs_completed`` and, mid-epoch, ``in_epoch`` (batches trained and the
  epoch's running loss/accuracy sums, so the epoch's row comes out as if never interrupted);
- every metrics row so far (``train_state.rows``: ``metrics.jsonl`` is rebuilt from them when damaged), the
  best and last rows, the evaluation before training (if any) and the W&B run id;
- ``config_hash`` and the identity config, so a checkpoint is never resumed by a different experiment.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dualadam.atomic_files import json_safe
from dualadam.training import metrics as M
from dualadam.training.checkpoint import restore_rng_states, rng_states, save_checkpoint
from dualadam.training.distributed import gather_objects, is_main_process
from dualadam.training.outputs import config_hash, identity_config
from dualadam.training.runtime import Runtime
from dualadam.training.task import model_checkpoint_state, restore_model_checkpoint_state
from dualadam.training.trainer import EpochProgress, Trainer, TrainState

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class Checkpointer:
    """Saves ``trainer``'s state to ``path`` (rank 0 writes; every rank contributes its RNG states)."""

    def __init__(self, path: Path, runtime: Runtime, cfg: DictConfig, *, previous: Path | None = None):
        self.path = Path(path)
        self.previous = previous
        self.runtime = runtime
        self.identity = config_hash(cfg)
        self.config = OmegaConf.to_container(identity_config(cfg), resolve=True)
        self.rows: list[dict] = []   # every epoch's metrics row so far, as metrics.jsonl holds them

    def _rows_through(self, state: TrainState) -> list[dict]:
        """The rows of epochs 1..``state.epochs_completed`` (the newest is ``state.last``)."""
        if state.last is None:
            return []
        epoch = int(state.last[M.EPOCH])
        return [row for row in self.rows if int(row[M.EPOCH]) < epoch] + [json_safe(state.last)]

    def save(self, trainer: Trainer, state: TrainState) -> None:
        """A collective when distributed: every rank must call it at the same point."""
        in_epoch = state.in_epoch
        ranks = gather_objects({"rng": rng_states(),
                                "epoch_totals": None if in_epoch is None else in_epoch.totals_state()}, self.runtime)
        if not is_main_process(self.runtime):
            return
        scaler = trainer.scaler.state_dict() if trainer.scaler is not None else None
        self.rows = self._rows_through(state)
        payload = {
            "format": FORMAT_VERSION,
            "config_hash": self.identity,
            "config": self.config,
            "model": model_checkpoint_state(trainer.task),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "grad_scaler": scaler,
            "ranks": ranks,  # per rank: RNG states and, mid-epoch, the epoch's running sums
            "world_size": self.runtime.world_size,
            "train_state": {
                "epochs_completed": state.epochs_completed, "last": state.last, "best": state.best,
                "rows": self.rows,
                "wandb_run_id": state.wandb_run_id, "initial": state.initial,
                "in_epoch": None if in_epoch is None else in_epoch.position(),
            },
        }
        save_checkpoint(payload, self.path, previous=self.previous)
        where = (f"epoch {state.epochs_completed}" if state.in_epoch is None else
                 f"epoch {state.in_epoch.epoch + 1}, batch {state.in_epoch.batches}")
        log.info("Checkpoint saved (%s): %s", where, self.path)

    def restore(self, trainer: Trainer, payload: dict) -> TrainState:
        """Load ``payload`` into ``trainer`` and return the training state to continue from."""
        if payload.get("format") != FORMAT_VERSION:
            raise ValueError(f"{self.path} has checkpoint format {payload.get('format')!r}; this version reads "
                             f"{FORMAT_VERSION}. Resume it with the code that wrote it, or trainer.resume=false")
        restore_model_checkpoint_state(trainer.task, payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.scheduler.load_state_dict(payload["scheduler"])
        if trainer.scaler is not None and payload["grad_scaler"] is not None:
            trainer.scaler.load_state_dict(payload["grad_scaler"])
        mine = self._this_ranks_part(payload)
        restore_rng_states(mine["rng"])
        saved = payload["train_state"]
        self.rows = list(saved.get("rows") or [])
        in_epoch = None
        if saved["in_epoch"] is not None:
            in_epoch = EpochProgress.restore(saved["in_epoch"], mine["epoch_totals"], self.runtime.device)
        state = TrainState(epochs_completed=saved["epochs_completed"], last=saved["last"], best=saved["best"],
                           wandb_run_id=saved["wandb_run_id"], initial=saved.get("initial"),
                           in_epoch=in_epoch)
        where = (f"the end of epoch {state.epochs_completed}" if state.in_epoch is None else
                 f"epoch {state.in_epoch.epoch + 1}, batch {state.in_epoch.batches}")
        log.info("Resuming from %s (%s)", where, self.path)
        return state

    def _this_ranks_part(self, payload: dict) -> dict:
        """This rank's RNG states and epoch sums. Resumed by a different number of processes, rank 0 takes
        rank 0's RNG states and everyone's sums (the others start from zero, so the epoch's totals still add
        up), and every other rank takes rank 0's RNG states too."""
        ranks, rank = payload["ranks"], self.runtime.rank
        if len(ranks) == self.runtime.world_size:
            return ranks[rank]
        log.warning("The checkpoint was written by %d processes and is resumed by %d: training continues from "
                    "the same state, but RNG streams and the order of float sums differ, so the result is not "
                    "bitwise the uninterrupted one", len(ranks), self.runtime.world_size)
        totals = [part["epoch_totals"] for part in ranks]
        if totals[0] is None:
            return {"rng": ranks[0]["rng"], "epoch_totals": None}
        merged = {"loss_sum": sum(t["loss_sum"] for t in totals) if rank == 0 else totals[0]["loss_sum"] * 0,
                  "correct": sum(t["correct"] for t in totals) if rank == 0 else totals[0]["correct"] * 0,
                  "count": sum(t["count"] for t in totals) if rank == 0 else 0}
        return {"rng": ranks[0]["rng"], "epoch_totals": merged}
