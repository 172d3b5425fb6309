"""``python -m dualadam.compare experiment=<study> [overrides]``: the whole tuned-comparison protocol.

Overrides are Hydra's, composed over ``configs/compare.yaml`` (which includes ``configs/train.yaml``):

- ``compare.*`` and ``hparams_search=...`` set the protocol (K, seeds, metric, sampler);
- ``hydra/launcher=...`` and ``hydra.*`` go to each batch's multirun (e.g. ``hydra/launcher=joblib
  hydra.launcher.n_jobs=2``, ``hydra/launcher=slurm``);
- everything else is a training override shared by every trial and confirmation run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dualadam.compare.protocol import Launch, run_protocol
from dualadam.compare.settings import CompareConfigError, read_protocol
from dualadam.training.run_directory import register_resolvers

PROTOCOL_PREFIXES = ("compare.", "compare=", "hparams_search", "+compare.", "++compare.")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(protocol, training, hydra) overrides."""
    protocol, training, hydra = [], [], []
    for override in overrides:
        if override.startswith(PROTOCOL_PREFIXES):
            protocol.append(override)
        elif override.lstrip("+~").startswith(("hydra.", "hydra/")):
            hydra.append(override)
        else:
            training.append(override)
    return protocol, training, hydra


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def study_name(cfg: DictConfig, training: list[str]) -> str:
    experiment = [o.split("=", 1)[1] for o in training if o.startswith("experiment=")]
    name = cfg.compare.study or (experiment[-1] if experiment else None)
    if not name:
        raise CompareConfigError("compare.study=None and no experiment=<study>: the protocol needs a study "
                                 "name for its folders. Run `python -m dualadam.compare experiment=<study>`, "
                                 "or set compare.study=<name>")
    return str(name)


def prepare(overrides: list[str], config_dir: Path) -> tuple:
    """The checked protocol and launch settings of a command line; raises before any work on bad input."""
    protocol_overrides, training, hydra = split_overrides(overrides)
    cfg = _compose(config_dir, "compare", [*protocol_overrides, *training])
    if "compare" in _compose(config_dir, "train", training):
        training = [*training, "~compare"]   # the study file's protocol block is not part of any run
    protocol = read_protocol(cfg, study_name(cfg, training), config_dir)
    return protocol, Launch(tuple(training), tuple(hydra), config_dir)


def main(argv: list[str] | None = None) -> dict:
    from dualadam.train import CONFIG_DIR

    logging.basicConfig(level=logging.INFO, format="[compare] %(message)s")
    try:
        protocol, launch = prepare(sys.argv[1:] if argv is None else argv, Path(CONFIG_DIR))
    except CompareConfigError as error:
        if argv is not None:
            raise
        raise SystemExit(f"[compare] {error}") from None
    record = run_protocol(protocol, launch)
    for name, selection in record["selections"].items():
        print(f"[compare] {name}: trial {selection['number']}, {protocol.metric} {selection['score']:.4g}, "
              f"{selection['params']}")
    print(f"[compare] protocol and tables in {protocol.results}/")
    return record


if __name__ == "__main__":
    main()
