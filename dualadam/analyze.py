"""Flatness of a trained run, from its checkpoint: ``python -m dualadam.analyze <run_dir> [options]``.

Writes into the run directory:

- ``sharpness.json``: ``sharpness/hessian_top_eig``, ``sharpness/hessian_trace`` and its standard error, and
  how they were measured (strict JSON: a measurement that is not a number is written as null);
- ``landscape_1d.png``, ``landscape_2d.png``: filter-normalized slices around the solution (Li et al. 2018);
- with ``--line-to <other_run_dir>``: ``line_to_<other>.png``, the loss on the straight line between the two
  solutions (e.g. Adam's and DualAdam's from the same seed).

The loss is the run's own training loss on the first ``--batches`` batches of ``--batch-size`` images of its
fixed train-eval set (training images, no augmentation), as in the trainer's ``analysis.sharpness`` option.

Cost. Every stage is a count of two units: a Hessian-vector product (HVP: Lanczos iterations, Hutchinson
probes) and a loss evaluation (landscape grid points, points on the line), both over the measured images.
For the CIFAR ResNet-18 an HVP is 9.1 forward passes (10.1 against 1.11 GFLOP per image, counted with
torch's FlopCounterMode). The command measures both units on the run's model first, prints what the chosen
settings will take, then shows each stage's progress and ETA on stderr.

- ``--preset cpu`` (default): 1 batch of 64 images, 10 Lanczos iterations, 8 Hutchinson probes, 21 points
  on the 1-D slice and the line, a 9x9 2-D grid: 18 HVPs and 102 loss evaluations, a few minutes for a
  ResNet-18 on 2 CPU cores.
- ``--preset paper``: 4 batches of 256 images, 20 Lanczos iterations, 50 probes, 41 points, a 21x21 grid
  (the trainer's ``analysis.*`` defaults): 16 times the images and about 90 times the CPU preset's work.

Any option given explicitly overrides its preset's value.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dualadam.analysis import hessian_vector_product, mean_loss, write_landscape_plots, write_line_plot
from dualadam.analysis.evaluation import eval_mode, trainable_parameters
from dualadam.analysis.progress import StageBars
from dualadam.atomic_files import atomic_write_json, strict_json
from dualadam.tasks import build_task
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.final_analysis import final_sharpness, measurement_batches, task_loss
from dualadam.training.outputs import read_run_config
from dualadam.training.runtime import resolve_runtime
from dualadam.training.task import restore_model_checkpoint_state

CHECKPOINT = "last.pt"
RESULT_FILE = "sharpness.json"


@dataclass(frozen=True)
class Settings:
    """What is measured and how finely. ``batch_size=None`` keeps the run's own ``trainer.eval_batch_size``."""
    batches: int
    batch_size: int | None
    eig_iters: int
    trace_samples: int
    points_1d: int
    points_2d: int
    seed: int = 0


PRESETS = {
    "cpu": Settings(batches=1, batch_size=64, eig_iters=10, trace_samples=8, points_1d=21, points_2d=9),
    "paper": Settings(batches=4, batch_size=256, eig_iters=20, trace_samples=50, points_1d=41, points_2d=21),
}


def run_config(run_dir: Path, payload: dict, data_root: str | None, batch_size: int | None = None) -> DictConfig:
    """The run's config, made runnable here (data root, device, no W&B): its ``config.json`` (the whole config
    of its first attempt), else (older runs) the identity config its checkpoint carries. ``batch_size`` sets
    the train-eval batch size (the measured images come in batches of that size)."""
    recorded = read_run_config(run_dir)
    cfg = OmegaConf.create(recorded["config"] if recorded and recorded.get("config") else payload["config"])
    with open_dict(cfg):
        cfg.dataset.root = data_root or os.environ.get("DUALADAM_DATA") or "data"
        cfg.dataset.download = False
        cfg.trainer.device = "auto"
        cfg.trainer.num_workers = 0
        if batch_size is not None:
            cfg.trainer.eval_batch_size = batch_size
        cfg.run_dir = str(run_dir)
    return cfg


def load_run(run_dir: Path, data_root: str | None, batch_size: int | None = None):
    """(config, task with the checkpoint's weights loaded) for ``run_dir``."""
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} does not exist: analyze needs a run directory written by "
                         "`python -m dualadam.train` (it saves last.pt after every epoch)")
    payload = load_checkpoint(checkpoint)
    cfg = run_config(run_dir, payload, data_root, batch_size)
    task = build_task(cfg, resolve_runtime(cfg.trainer))
    restore_model_checkpoint_state(task, payload["model"])
    return cfg, task


@dataclass(frozen=True)
class UnitCosts:
    """Seconds for one loss evaluation and one Hessian-vector product over the measured images, here."""
    loss_s: float
    hvp_s: float


def measure_unit_costs(model, loss_fn, data) -> UnitCosts:
    """Time one loss evaluation and one HVP on the run's own model and images (it also warms them up)."""
    with eval_mode(model):
        start = time.perf_counter()
        mean_loss(model, loss_fn, data)
        loss_s = time.perf_counter() - start
        vector = [torch.ones_like(p) for p in trainable_parameters(model)]
        start = time.perf_counter()
        hessian_vector_product(model, loss_fn, data, vector)
    return UnitCosts(loss_s, time.perf_counter() - start)


def planned_stages(settings: Settings, *, plots: bool, line: bool) -> list[tuple[str, int, str]]:
    """(stage, count, unit) for each stage the settings run; unit is "hvp" or "loss"."""
    stages = [("Lanczos iterations (at most)", settings.eig_iters, "hvp"),
              ("Hutchinson probes", settings.trace_samples, "hvp")]
    if plots:
        stages += [("1-D slice points", settings.points_1d, "loss"),
                   (f"2-D grid points ({settings.points_2d}x{settings.points_2d})", settings.points_2d**2, "loss")]
    if line:
        stages.append(("points on the line", settings.points_1d, "loss"))
    return stages


def estimated_seconds(stages, costs: UnitCosts) -> float:
    return sum(count * (costs.hvp_s if unit == "hvp" else costs.loss_s) for _, count, unit in stages)


def _minutes(seconds: float) -> str:
    if seconds >= 600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe_plan(name: str, settings: Settings, images: int, costs: UnitCosts, *, plots: bool,
                  line: bool) -> str:
    """The up-front estimate: per-unit costs measured now, each stage's share, and how to go faster or finer."""
    stages = planned_stages(settings, plots=plots, line=line)
    parts = ", ".join(f"{count} {stage} ({_minutes(count * (costs.hvp_s if unit == 'hvp' else costs.loss_s))})"
                      for stage, count, unit in stages)
    paper = PRESETS["paper"]
    scale = paper.batches * paper.batch_size / max(images, 1)
    paper_s = estimated_seconds(planned_stages(paper, plots=plots, line=line), costs) * scale
    return (f"[analyze] {name}: the loss is the mean over {images} train-eval examples; measured here: one loss "
            f"evaluation {costs.loss_s:.2f} s, one Hessian-vector product {costs.hvp_s:.2f} s\n"
            f"[analyze] estimate {_minutes(estimated_seconds(stages, costs))}: {parts}\n"
            "[analyze] faster: --no-plots, fewer --trace-samples / --eig-iters / --points-2d, a smaller "
            f"--batch-size; paper scale (--preset paper) would take about {_minutes(paper_s)} here")


def _examples(batch) -> int:
    """How many examples a batch holds: ``(inputs, targets)`` for images, a dict of tensors for text."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(first)


def _log(message: str, stream=None) -> None:
    print(message, file=stream or sys.stderr, flush=True)


def analyze(run_dir: Path, *, settings: Settings = PRESETS["cpu"], plots: bool = True, line_to: Path | None = None,
            data_root: str | None = None, stream=None) -> dict:
    """Measure ``run_dir``'s flatness with ``settings``, write ``sharpness.json`` (and the plots) into it and
    return what it wrote. Progress and the up-front estimate go to ``stream`` (stderr by default)."""
    run_dir = Path(run_dir).resolve()
    _log(f"[analyze] {run_dir.name}: loading {CHECKPOINT} and its data", stream)
    _, task = load_run(run_dir, data_root, settings.batch_size)
    data, loss_fn = measurement_batches(task, settings.batches), task_loss(task)
    images = sum(_examples(batch) for batch in data)
    costs = measure_unit_costs(task.model.float(), loss_fn, data)
    _log(describe_plan(run_dir.name, settings, images, costs, plots=plots, line=line_to is not None), stream)
    stage = StageBars(f"[analyze] {run_dir.name}", stream)
    started = time.perf_counter()
    measured = final_sharpness(task, OmegaConf.create(asdict(settings)), stage=stage)
    result = {"run_dir": str(run_dir), "settings": {**asdict(settings), "images": images}, **measured}
    if plots:
        landscape = write_landscape_plots(task.model, loss_fn, data, run_dir, seed=settings.seed,
                                          points_1d=settings.points_1d, points_2d=settings.points_2d, stage=stage)
        result["landscape"] = {k: v for k, v in landscape.items() if k.endswith("_png")}
    if line_to is not None:
        result["line"] = _line_to(task, loss_fn, data, run_dir, Path(line_to).resolve(), settings, data_root, stage)
    result["seconds"] = {"measuring": round(time.perf_counter() - started, 1),
                         "estimated": round(estimated_seconds(planned_stages(settings, plots=plots,
                                                                             line=line_to is not None), costs), 1)}
    write_result(run_dir, result)
    return result


def _line_to(task, loss_fn, data, run_dir: Path, other_dir: Path, settings: Settings, data_root, stage) -> dict:
    _, other = load_run(other_dir, data_root, settings.batch_size)
    start = {k: v.clone() for k, v in task.model.state_dict().items()}
    line = write_line_plot(task.model, loss_fn, data, start, other.model.state_dict(),
                           run_dir / f"line_to_{other_dir.name}.png", labels=(run_dir.name, other_dir.name),
                           points=settings.points_1d, stage=stage)
    task.model.load_state_dict(start)
    return {"png": line["line_png"], "ts": line["ts"], "losses": line["losses"]}


def write_result(run_dir: Path, result: dict) -> Path:
    """``sharpness.json``, strict JSON written atomically (a diverged run's NaN measurement becomes null)."""
    path = Path(run_dir) / RESULT_FILE
    atomic_write_json(path, result, sort_keys=True)
    return path


def parse_settings(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="default values of the options below (cpu: minutes on a CPU; paper: the paper's scale)")
    parser.add_argument("--batches", type=int, help="train-eval batches defining the loss")
    parser.add_argument("--batch-size", type=int, help="images per batch (replaces the run's eval_batch_size)")
    parser.add_argument("--eig-iters", type=int, help="Lanczos iterations (one HVP each)")
    parser.add_argument("--trace-samples", type=int, help="Hutchinson probes (one HVP each)")
    parser.add_argument("--points-1d", type=int, help="points on the 1-D slice and on the line")
    parser.add_argument("--points-2d", type=int, help="points per side of the 2-D slice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the landscape slices")
    parser.add_argument("--line-to", type=Path, default=None, help="another run directory (same model)")
    parser.add_argument("--data-root", default=None, help="default: $DUALADAM_DATA, else data")
    args = parser.parse_args(argv)
    chosen = {key: getattr(args, key) for key in ("batches", "batch_size", "eig_iters", "trace_samples",
                                                  "points_1d", "points_2d", "seed")}
    settings = replace(PRESETS[args.preset], **{k: v for k, v in chosen.items() if v is not None})
    for key in ("batches", "batch_size", "eig_iters", "points_1d", "points_2d"):
        if getattr(settings, key) < 1:
            parser.error(f"--{key.replace('_', '-')}={getattr(settings, key)}: must be at least 1")
    if settings.trace_samples < 2:
        parser.error(f"--trace-samples={settings.trace_samples}: a standard error needs at least 2 probes")
    return args, settings


def main(argv: list[str] | None = None) -> None:
    args, settings = parse_settings(argv)
    torch.manual_seed(settings.seed)
    result = analyze(args.run_dir, settings=settings, plots=not args.no_plots, line_to=args.line_to,
                     data_root=args.data_root)
    print(strict_json({k: v for k, v in result.items() if k.startswith("sharpness/")}, indent=2))
    print(f"[dualadam] wrote {Path(result['run_dir']) / RESULT_FILE} in {result['seconds']['measuring']} s "
          f"(estimated {result['seconds']['estimated']} s)")


if __name__ == "__main__":
    main()
