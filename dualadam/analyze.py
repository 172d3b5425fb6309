"""Flatness of a trained run, from its checkpoint: ``python -m dualadam.analyze <run_dir> [options]``.

Writes into the run directory:

- ``sharpness.json``: ``sharpness/hessian_top_eig``, ``sharpness/hessian_trace`` and its standard error, and
  how they were measured;
- ``landscape_1d.png``, ``landscape_2d.png``: filter-normalized slices around the solution (Li et al. 2018);
- with ``--line-to <other_run_dir>``: ``line_to_<other>.png``, the loss on the straight line between the two
  solutions (e.g. Adam's and DualAdam's from the same seed).

The loss is the run's own training loss on the first ``--batches`` batches of its fixed train-eval set
(training images, no augmentation), as in the trainer's ``analysis.sharpness`` option.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dualadam.analysis import write_landscape_plots, write_line_plot
from dualadam.tasks import build_task
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.final_analysis import final_sharpness, measurement_batches, task_loss
from dualadam.training.outputs import read_run_config
from dualadam.training.runtime import resolve_runtime
from dualadam.training.task import restore_model_checkpoint_state

CHECKPOINT = "last.pt"


def run_config(run_dir: Path, payload: dict, data_root: str | None) -> DictConfig:
    """The run's config, made runnable here (data root, device, no W&B): its ``config.json`` (the whole config
    of its first attempt), else (older runs) the identity config its checkpoint carries."""
    recorded = read_run_config(run_dir)
    cfg = OmegaConf.create(recorded["config"] if recorded and recorded.get("config") else payload["config"])
    with open_dict(cfg):
        cfg.dataset.root = data_root or os.environ.get("DUALADAM_DATA") or "data"
        cfg.dataset.download = False
        cfg.trainer.device = "auto"
        cfg.trainer.num_workers = 0
        cfg.run_dir = str(run_dir)
    return cfg


def load_run(run_dir: Path, data_root: str | None):
    """(config, task with the checkpoint's weights loaded) for ``run_dir``."""
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} does not exist: analyze needs a run directory written by "
                         "`python -m dualadam.train` (it saves last.pt after every epoch)")
    payload = load_checkpoint(checkpoint)
    cfg = run_config(run_dir, payload, data_root)
    task = build_task(cfg, resolve_runtime(cfg.trainer))
    restore_model_checkpoint_state(task, payload["model"])
    return cfg, task


def analyze(run_dir: Path, *, batches: int, eig_iters: int, trace_samples: int, seed: int, plots: bool,
            line_to: Path | None = None, data_root: str | None = None, points_1d: int = 41,
            points_2d: int = 21) -> dict:
    run_dir = Path(run_dir).resolve()
    cfg, task = load_run(run_dir, data_root)
    settings = OmegaConf.create({"batches": batches, "eig_iters": eig_iters, "trace_samples": trace_samples,
                                 "seed": seed})
    result = {"run_dir": str(run_dir), "settings": OmegaConf.to_container(settings),
              **final_sharpness(task, settings)}
    if plots or line_to is not None:
        data = measurement_batches(task, batches)
        loss_fn = task_loss(task)
        if plots:
            landscape = write_landscape_plots(task.model, loss_fn, data, run_dir, seed=seed, points_1d=points_1d,
                                              points_2d=points_2d)
            result["landscape"] = {k: v for k, v in landscape.items() if k.endswith("_png")}
        if line_to is not None:
            _, other = load_run(Path(line_to).resolve(), data_root)
            start = {k: v.clone() for k, v in task.model.state_dict().items()}
            path = run_dir / f"line_to_{Path(line_to).resolve().name}.png"
            line = write_line_plot(task.model, loss_fn, data, start, other.model.state_dict(), path,
                                   labels=(run_dir.name, Path(line_to).resolve().name), points=points_1d)
            task.model.load_state_dict(start)
            result["line"] = {"png": line["line_png"], "ts": line["ts"], "losses": line["losses"]}
    (run_dir / "sharpness.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=4, help="train-eval batches defining the loss")
    parser.add_argument("--eig-iters", type=int, default=20, help="Lanczos iterations")
    parser.add_argument("--trace-samples", type=int, default=50, help="Hutchinson probes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the landscape slices (the costly part)")
    parser.add_argument("--points-1d", type=int, default=41, help="points on the 1-D slice and on the line")
    parser.add_argument("--points-2d", type=int, default=21, help="points per side of the 2-D slice")
    parser.add_argument("--line-to", type=Path, default=None, help="another run directory (same model)")
    parser.add_argument("--data-root", default=None, help="default: $DUALADAM_DATA, else data")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    result = analyze(args.run_dir, batches=args.batches, eig_iters=args.eig_iters,
                     trace_samples=args.trace_samples, seed=args.seed, plots=not args.no_plots,
                     line_to=args.line_to, data_root=args.data_root, points_1d=args.points_1d,
                     points_2d=args.points_2d)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("sharpness/")}, indent=2))
    print(f"[dualadam] wrote {Path(result['run_dir']) / 'sharpness.json'}")


if __name__ == "__main__":
    main()
