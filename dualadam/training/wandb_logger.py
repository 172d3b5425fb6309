"""Weights & Biases logging that can never stop training.

``logger.mode``: ``online``, ``offline``, ``disabled``, or ``auto`` (online when W&B credentials exist, offline
otherwise, so a machine without an account or network still records the run). An online start that fails
falls back to offline within ``logger.init_timeout`` seconds (15 by default; W&B's own wait was 90 s and its
retries made it longer): a server that cannot even be connected to is found out in a few seconds, before
``wandb.init`` is tried. Every later W&B error becomes a warning. W&B's files go to ``<run_dir>/wandb/``; its
console banners are silenced (``silent``): our own log lines say where the run's W&B files are.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


def wandb_credentials_exist() -> bool:
    """An API key in ``WANDB_API_KEY``, or a netrc entry for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    return url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)


def server_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the W&B server opens within ``timeout`` seconds (refused: at once)."""
    try:
        socket.create_connection(wandb_host(), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if wandb_credentials_exist() else "offline"
    return mode


class WandbLogger:
    """One W&B run for one training run. ``run_id`` (W&B's, or one passed in) lets a resumed training run
    continue the same W&B run."""

    def __init__(self, logger_cfg, run_dir: str | Path, config: dict, run_id: str | None = None):
        self.cfg = logger_cfg
        self.run_dir = Path(run_dir)
        self.config = config
        self.mode = resolve_mode(str(logger_cfg.mode))
        self.run = None
        self.run_id = run_id

    def start(self) -> None:
        if self.mode == "disabled":
            return
        began = time.monotonic()
        budget = float(self.cfg.get("init_timeout", 15))
        if self.mode == "online" and not server_reachable(timeout=min(5.0, budget / 3)):
            log.warning("W&B: cannot connect to %s:%d", *wandb_host())
        else:
            self.run = self._init(self.mode, timeout=max(1.0, budget - (time.monotonic() - began)))
        if self.run is None and self.mode == "online":
            log.warning("W&B: online start failed; logging offline to %s instead (sync later with "
                        "`wandb sync %s/wandb/offline-run-*`)", self.run_dir, self.run_dir)
            self.mode = "offline"
            self.run = self._init("offline", timeout=budget)
        if self.run is not None:
            self.run_id = self.run.id
            log.info("W&B: %s run %s, files in %s", self.mode, self.run_id, self.files_dir)

    def _init(self, mode: str, timeout: float):
        try:
            import wandb

            return wandb.init(
                mode=mode, dir=str(self.run_dir), id=self.run_id, resume="allow", config=self.config,
                project=self.cfg.project, entity=self.cfg.entity, group=self.cfg.group, name=self.cfg.name,
                tags=list(self.cfg.tags or []), notes=self.cfg.notes, job_type=self.cfg.job_type,
                settings=wandb.Settings(console=str(self.cfg.console), init_timeout=timeout, silent=True),
            )
        except Exception as error:  # W&B must never stop training
            log.warning("W&B: could not start a %s run (%s: %s); training continues without it",
                        mode, type(error).__name__, error)
            return None

    def _safely(self, what: str, action) -> None:
        if self.run is None:
            return
        try:
            action(self.run)
        except Exception as error:  # W&B must never stop training
            log.warning("W&B: %s failed (%s: %s); training continues", what, type(error).__name__, error)

    def log_epoch(self, record: dict[str, float]) -> None:
        self._safely("log", lambda run: run.log(record, step=int(record["epoch"])))

    def update_summary(self, values: dict) -> None:
        self._safely("summary update", lambda run: run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        self._safely("finish", lambda run: run.finish(exit_code=exit_code))
        self.run = None

    @property
    def files_dir(self) -> str | None:
        """Where this run's W&B files are, for the summary."""
        return str(self.run_dir / "wandb") if self.mode != "disabled" else None
