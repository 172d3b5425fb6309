"""Per-optimizer search spaces (``configs/search_space/<optimizer>.yaml``): Optuna distributions, and the
training overrides a trial's parameters become.

A parameter is searched as written (``low``, ``high``, ``log``) and sets one training key. ``as:
inverse_fraction_of_steps`` makes a length given as a fraction of the run into DualAdam's ``switch_rate``:
``1 / (fraction * total steps)``, so the blend (or the matched warmup) lasts that fraction of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution

from dualadam.compare.settings import CompareConfigError

TRANSFORMS = ("value", "inverse_fraction_of_steps")
FIELDS = {"key", "low", "high", "log", "as"}


@dataclass(frozen=True)
class Parameter:
    name: str
    key: str                  # the training config key it sets
    low: float
    high: float
    log: bool
    transform: str = "value"

    @property
    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log)

    def training_value(self, value: float, total_steps: int) -> float:
        if self.transform == "inverse_fraction_of_steps":
            return 1.0 / (value * total_steps)
        return value

    def describe(self) -> dict:
        return {"key": self.key, "low": self.low, "high": self.high, "log": self.log, "as": self.transform}


def _parameter(optimizer: str, name: str, spec: dict) -> Parameter:
    where = f"configs/search_space/{optimizer}.yaml ({name})"
    unknown = set(spec) - FIELDS
    if unknown or not {"key", "low", "high"} <= set(spec):
        raise CompareConfigError(f"{where}: expected the fields key, low, high (and optionally log, as); got "
                                 f"{sorted(spec)}. Fix the search space file")
    low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
    if not low < high or (log and low <= 0):
        raise CompareConfigError(f"{where}: low={low}, high={high}, log={log} is not a range (low < high, and "
                                 "low > 0 on a log scale). Fix the bounds")
    transform = spec.get("as", "value")
    if transform not in TRANSFORMS:
        raise CompareConfigError(f"{where}: as={transform!r} is unknown; choose one of {TRANSFORMS}")
    return Parameter(name, str(spec["key"]), low, high, log, transform)


def load_search_space(config_dir: Path, optimizer: str, changes: dict | None = None) -> dict[str, Parameter]:
    """The optimizer's parameters, in file order, with ``changes`` (``compare.search_spaces.<optimizer>``)
    merged over the file."""
    spec = OmegaConf.merge(OmegaConf.load(Path(config_dir) / "search_space" / f"{optimizer}.yaml"), changes or {})
    spec = OmegaConf.to_container(spec, resolve=True)
    return {name: _parameter(optimizer, name, fields) for name, fields in spec.items()}


def check_fits_run(optimizer: str, space: dict[str, Parameter], total_steps: int) -> None:
    """A length searched as a fraction of the run must last at least one optimizer step."""
    for p in space.values():
        if p.transform == "inverse_fraction_of_steps" and p.low * total_steps < 1:
            raise CompareConfigError(
                f"configs/search_space/{optimizer}.yaml ({p.name}): low={p.low} of this run's {total_steps} "
                f"steps is under one step. Raise it, e.g. compare.search_spaces.{optimizer}.{p.name}.low="
                f"{1.0 / total_steps:.3g}, or train for more steps")


def training_values(space: dict[str, Parameter], params: dict[str, float], total_steps: int) -> dict[str, float]:
    """``{training key: value}`` for a trial's ``params`` (Optuna's, by parameter name)."""
    return {p.key: p.training_value(params[p.name], total_steps) for p in space.values()}
