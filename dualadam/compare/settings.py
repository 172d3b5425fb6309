"""The protocol's settings, read from the composed ``compare`` and ``hparams_search`` blocks and checked before
any work starts: every error names the key, the problem and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dualadam.training.metrics import EPOCH_METRIC_KEYS, HIGHER_IS_BETTER, VALIDATION_METRIC_KEYS
from dualadam.training.validation import ConfigError

SAMPLERS = ("quasi_random", "tpe")
MIN_CONFIRM_SEEDS = 5


class CompareConfigError(ConfigError):
    """A protocol setting that cannot work; raised before anything is trained."""


@dataclass(frozen=True)
class Protocol:
    study: str                       # the experiment file's name; names the study's folders
    optimizers: tuple[str, ...]
    trials: int                      # K per optimizer
    tune_seed: int
    confirm_seeds: tuple[int, ...]
    metric: str
    parallel: int
    sampler: dict                    # the hparams_search block: sampler name, seed, options
    folder: Path                     # <compare.folder>/<study>
    results: Path                    # <compare.results>/<study>
    docs: tuple[str, ...]             # Markdown files whose results/verdicts blocks the report rewrites
    tune_overrides: tuple[str, ...]
    confirm_overrides: tuple[str, ...]
    search_space_changes: dict

    @property
    def maximize(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def storage(self) -> str:
        return f"sqlite:///{(self.folder / 'search.db').resolve()}"


def _fail(key: str, value, problem: str, fix: str) -> CompareConfigError:
    return CompareConfigError(f"{key}={value!r}: {problem}. {fix}")


def _check_optimizers(names: list, config_dir: Path) -> None:
    if not names:
        raise _fail("compare.optimizers", names, "no optimizer to compare", "Name at least one optimizer choice")
    for name in names:
        for group in ("optimizer", "search_space"):
            if not (config_dir / group / f"{name}.yaml").is_file():
                raise _fail("compare.optimizers", name, f"configs/{group}/{name}.yaml does not exist",
                            f"Choose among the optimizers with a search space: "
                            f"{sorted(p.stem for p in (config_dir / 'search_space').glob('*.yaml'))}")
    if len(set(names)) != len(names):
        raise _fail("compare.optimizers", names, "an optimizer is named twice", "Name each once")


def _check_budget(c: DictConfig) -> None:
    if not (isinstance(c.trials, int) and c.trials >= 1):
        raise _fail("compare.trials", c.trials, "expected an integer >= 1", "e.g. compare.trials=6")
    if not (isinstance(c.parallel, int) and c.parallel >= 1):
        raise _fail("compare.parallel", c.parallel, "expected an integer >= 1", "e.g. compare.parallel=1")
    seeds = list(c.confirm_seeds)
    if len(seeds) < MIN_CONFIRM_SEEDS or len(set(seeds)) != len(seeds):
        raise _fail("compare.confirm_seeds", seeds, f"expected at least {MIN_CONFIRM_SEEDS} distinct seeds",
                    "e.g. compare.confirm_seeds=[1,2,3,4,5]")
    if c.tune_seed in seeds:
        raise _fail("compare.confirm_seeds", seeds, f"it holds the tuning seed {c.tune_seed}; confirmation "
                    "needs fresh seeds", "Remove it, or change compare.tune_seed")


def _check_docs(docs) -> None:
    if not (OmegaConf.is_list(docs) and all(isinstance(d, str) and d for d in docs)):
        raise _fail("compare.docs", docs, "expected a list of Markdown file paths",
                    "e.g. compare.docs=[README.md,docs/results.md], or compare.docs=[] for none")


def _check_metric(metric: str) -> None:
    recorded = (*EPOCH_METRIC_KEYS, *VALIDATION_METRIC_KEYS)
    if metric not in recorded:
        raise _fail("compare.metric", metric, "not a metric the trainer records",
                    f"Choose one of {', '.join(recorded)} (val/* needs dataset.val_size)")


def _check_sampler(search: DictConfig | None) -> None:
    if search is None or search.get("sampler") not in SAMPLERS:
        value = None if search is None else search.get("sampler")
        raise _fail("hparams_search.sampler", value, f"expected one of {SAMPLERS}",
                    "Choose a sampler with hparams_search=quasi_random or hparams_search=tpe")
    if not isinstance(search.get("seed"), int):
        raise _fail("hparams_search.seed", search.get("seed"), "expected an integer", "e.g. hparams_search.seed=0")


def read_protocol(cfg: DictConfig, study: str, config_dir: Path) -> Protocol:
    """The checked settings of ``cfg`` (``configs/compare.yaml`` composed with the study's overrides)."""
    c = cfg.compare
    _check_optimizers(list(c.optimizers), config_dir)
    _check_budget(c)
    _check_metric(c.metric)
    _check_docs(c.get("docs", []))
    _check_sampler(cfg.get("hparams_search"))
    changes = OmegaConf.to_container(c.search_spaces, resolve=True)
    unknown = sorted(set(changes) - set(c.optimizers))
    if unknown:
        raise _fail("compare.search_spaces", unknown, "changes for optimizers not compared",
                    f"Use names of compare.optimizers: {list(c.optimizers)}")
    return Protocol(
        study=study, optimizers=tuple(c.optimizers), trials=c.trials, tune_seed=c.tune_seed,
        confirm_seeds=tuple(c.confirm_seeds), metric=c.metric, parallel=c.parallel,
        sampler=OmegaConf.to_container(cfg.hparams_search, resolve=True),
        folder=Path(c.folder) / study, results=Path(c.results) / study,
        docs=(*([c.readme] if c.get("readme") else []), *c.get("docs", [])),
        tune_overrides=tuple(c.tune_overrides),
        confirm_overrides=tuple(c.get("confirm_overrides") or ()), search_space_changes=changes)
