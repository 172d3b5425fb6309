"""The training entrypoint: ``python -m dualadam.train [overrides]`` or ``dualadam-train [overrides]``.

A thin Hydra wrapper over ``dualadam.training.run.train``; tests call that function directly. See the README's
"Training" section for the configs and the defaults.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dualadam.training.run import train

# An absolute path: Hydra resolves a relative one against a Python package when started as a console script,
# and configs/ is a folder of the checkout, not a package.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    best = summary.get("best") or {}
    return best.get(cfg.trainer.monitor)  # what a Hydra sweeper optimizes


if __name__ == "__main__":
    main()
