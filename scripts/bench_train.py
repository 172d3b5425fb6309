"""Training throughput, images/s: the suite's default path against the authors' DataLoader and a bare loop.

Three pipelines train the same model (``small_cnn`` from the config, width 32) with the same optimizer
(``configs/optimizer/dualadam.yaml``), precision and batch size (128) on the real CIFAR-10 copy:

  (a) torchvision  the authors' style: ``ImageFolder`` over the JPEG files, per-sample PIL transforms
                   (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in 2 worker
                   processes, shuffled; each batch moved to the device, then a bare step;
  (b) suite        the suite's default path, through its real code: a ``Trainer`` from
                   ``dualadam.training.run.build_trainer`` on ``configs/train.yaml`` (dataset=cifar10,
                   model=small_cnn, the loader ``dataset.loader=auto`` picks), timed by
                   ``Trainer.train_one_epoch`` over an epoch of a train subset of ``--steps`` batches;
  (c) bare loop    the upper bound: the same step on batches made beforehand and already on the device
                   (zero_grad, forward under the runtime's autocast, cross-entropy, backward, step).

Protocol (one process, so machine load hits all three alike): each round runs ``--steps`` steps of every
pipeline in a freshly shuffled order; ratios are taken between pipelines of the same round and the medians of
those paired ratios are reported. "data wait" is the time the step loop spends inside the loader's
``next()``, as a fraction of the pipeline's wall time. (a) is timed from its first batch, so its worker
start-up (paid once per epoch by the authors) is not counted against it.

    make bench-train                     # or: python scripts/bench_train.py --rounds 7 --steps 12

The last line is machine-readable:
    bench-train: vs_bare_loop=<(b)/(c)> data_wait=<fraction of (b)'s time> vs_torchvision_loader=<(b)/(a)>
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torchvision import transforms as T

from dualadam.models import build_model
from dualadam.training.optimizers import build_optimizer
from dualadam.training.run import build_trainer
from dualadam.training.runtime import Runtime, resolve_runtime, seed_everything
from dualadam.training.validation import validate_config

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"vs_bare_loop": (">=", 0.95), "data_wait": ("<", 0.05)}


class TimedLoader:
    """Wraps a loader and adds up the seconds spent inside its ``next()``: the loop's wait for data."""

    def __init__(self, loader):
        self.loader, self.seconds = loader, 0.0

    def set_epoch(self, *args, **kwargs) -> None:
        self.loader.set_epoch(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch


def suite_config(data_root: Path, steps: int, batch_size: int, overrides: list[str]) -> DictConfig:
    """``configs/train.yaml`` as a user gets it, on a train subset of exactly ``steps`` batches."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "dataset=cifar10", f"dataset.root={data_root}", "dataset.download=false", "model=small_cnn",
            "logger=none", "trainer.progress=false", f"trainer.batch_size={batch_size}",
            f"dataset.train_subset={steps * batch_size}", "dataset.test_subset=1000", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(REPO / "outputs" / "bench-train")  # unused: no sinks
    validate_config(cfg)
    return cfg


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Learner:
    """A model and its optimizer, reset to a common snapshot before every timed run, so that all pipelines
    time the same arithmetic (weights that drift apart could, e.g., reach denormal values in one of them)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, runtime: Runtime):
        self.model, self.optimizer, self.runtime = model, optimizer, runtime

    def snapshot(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The bare step: forward under the runtime's autocast, cross-entropy, backward, optimizer step."""
        with self.runtime.autocast():
            loss = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def timed_loop(batches: Iterable, step: Callable, steps: int, runtime: Runtime, prepare=None) -> tuple[float, float]:
    """(seconds, seconds waiting in next()) for ``steps`` steps over ``batches``."""
    batches = TimedLoader(batches)
    start = time.perf_counter()
    for images, labels in batches:
        if prepare is not None:
            images, labels = prepare(images, labels)
        step(images, labels)
        steps -= 1
        if steps == 0:
            break
    synchronize(runtime.device)
    return time.perf_counter() - start, batches.seconds


class Pipelines:
    """The three contenders, built once; each ``run_*`` trains ``steps`` steps and returns (seconds, wait)."""

    def __init__(self, cfg: DictConfig, data_root: Path, steps: int, workers: int):
        seed_everything(cfg.seed)
        self.runtime = resolve_runtime(cfg.trainer)
        self.steps, self.batch_size = steps, cfg.trainer.batch_size
        self.trainer = build_trainer(cfg, self.runtime, sinks=[])
        self.suite_loader = TimedLoader(self.trainer.task.train_loader)
        self.trainer.task.train_loader = self.suite_loader  # the trainer's own loop now reports its waits
        self.suite = Learner(self.trainer.task.model, self.trainer.optimizer, self.runtime)
        info = self.trainer.task.info
        self.bare, self.torchvision = self._learner(cfg, info), self._learner(cfg, info)
        self.premade = list(self.suite_loader.loader)[:steps]  # already augmented, normalized, on the device
        self.authors_loader = authors_loader(data_root, info.mean, info.std, self.batch_size, workers, cfg.seed)
        self.epoch, self.start = 0, None

    def _learner(self, cfg: DictConfig, info) -> Learner:
        model = build_model(cfg.model, info).to(self.runtime.device, memory_format=self.runtime.memory_format)
        optimizer = build_optimizer(cfg.optimizer, model, fused=self.runtime.fused_optimizer)
        return Learner(model.train(), optimizer, self.runtime)

    def set_start(self) -> None:
        """Every later run starts from the suite's current model and optimizer state."""
        self.start = self.suite.snapshot()

    def run_suite(self) -> tuple[float, float]:
        self.suite.restore(self.start)
        self.epoch += 1
        waited = self.suite_loader.seconds
        result = self.trainer.train_one_epoch(self.epoch)
        assert result.samples == self.steps * self.batch_size, result.samples
        return result.seconds, self.suite_loader.seconds - waited

    def run_bare(self) -> tuple[float, float]:
        self.bare.restore(self.start)
        return timed_loop(self.premade, self.bare.step, self.steps, self.runtime)

    def run_torchvision(self) -> tuple[float, float]:
        batches = iter(self.authors_loader)  # new epoch: new order, workers started
        self.torchvision.step(*self._to_device(*next(batches)))  # untimed: worker start-up and the first fill
        self.torchvision.restore(self.start)
        return timed_loop(batches, self.torchvision.step, self.steps, self.runtime, prepare=self._to_device)

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device, memory_format = self.runtime.device, self.runtime.memory_format
        return (images.to(device, non_blocking=True, memory_format=memory_format),
                labels.to(device, non_blocking=True))


def authors_loader(data_root: Path, mean, std, batch_size: int, workers: int, seed: int):
    """The authors' CIFAR pipeline, over the image files (their copy was torchvision's arrays; here the real
    CIFAR-10 copy is JPEG, so each sample is also decoded, as any ImageFolder dataset is)."""
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    dataset = torchvision.datasets.ImageFolder(str(data_root / "cifar10" / "train"), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(),
                                       generator=torch.Generator().manual_seed(seed))


def measure(pipelines: Pipelines, rounds: int) -> list[dict[str, tuple[float, float]]]:
    pipelines.suite.step(*pipelines.premade[0])  # creates the optimizer state the snapshot then holds
    pipelines.set_start()
    runs = {"torchvision": pipelines.run_torchvision, "suite": pipelines.run_suite, "bare": pipelines.run_bare}
    for run in runs.values():  # warm-up: allocator, worker start-up
        run()
    results = []
    for _ in range(rounds):
        order = random.sample(list(runs), len(runs))
        results.append({name: runs[name]() for name in order})
    return results


def loader_rates(pipelines: Pipelines, batches: int = 40) -> dict[str, float]:
    """Images/s of each loader alone, no model: the most its training loop could ever reach on this host."""
    authors = iter(pipelines.authors_loader)
    next(authors)  # worker start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(authors)
    rates = {"torchvision": batches * pipelines.batch_size / (time.perf_counter() - start)}
    del authors
    suite, count = pipelines.suite_loader.loader, 0
    start = time.perf_counter()
    for epoch in range(-(-batches // len(suite))):
        suite.set_epoch(epoch)
        count += sum(len(labels) for _, labels in suite)
    synchronize(pipelines.runtime.device)
    rates["suite"] = count / (time.perf_counter() - start)
    return rates


def report(results: list[dict], images_per_run: int) -> dict[str, float]:
    def median_ratio(num: str, den: str) -> float:  # images/s ratio = inverse time ratio
        ratios = sorted(r[den][0] / r[num][0] for r in results)
        print(f"  {num}/{den} per round: quartiles {ratios[len(ratios) // 4]:.3f} .. "
              f"{ratios[(3 * len(ratios)) // 4]:.3f}")
        return statistics.median(ratios)

    print(f"{'pipeline':<14}{'images/s':>10}{'data wait':>11}")
    for name, label in (("torchvision", "(a) torchvision"), ("suite", "(b) suite"), ("bare", "(c) bare loop")):
        seconds = statistics.median(r[name][0] for r in results)
        wait = statistics.median(r[name][1] / r[name][0] for r in results)
        print(f"{label:<14}{images_per_run / seconds:10.0f}{wait:11.1%}")
    summary = {"vs_bare_loop": median_ratio("suite", "bare"),
               "data_wait": statistics.median(r["suite"][1] / r["suite"][0] for r in results),
               "vs_torchvision_loader": median_ratio("suite", "torchvision")}
    print(f"\n(b)/(a) = {summary['vs_torchvision_loader']:.3f}   (b)/(c) = {summary['vs_bare_loop']:.3f}   "
          f"(b) data wait = {summary['data_wait']:.2%} of step time")
    for key, (op, limit) in TARGETS.items():
        met = summary[key] >= limit if op == ">=" else summary[key] < limit
        print(f"target {key} {op} {limit}: {summary[key]:.3f}  {'met' if met else 'NOT MET'}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=4, help="training steps per pipeline per round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a), the authors' 2")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("DUALADAM_DATA") or "data"),
                        help="data root holding cifar10/train/<class>/*.jpg (`make data` puts it there)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for all three, e.g. model.kwargs.width=16")
    args = parser.parse_args()
    if not (args.data / "cifar10" / "train").is_dir():
        raise SystemExit(f"{args.data.resolve() / 'cifar10' / 'train'} is missing: run `make data` (unpacks the "
                         "shared CIFAR-10 copy) or pass --data <root>")
    random.seed(0)
    cfg = suite_config(args.data.resolve(), args.steps, args.batch_size, args.overrides)
    pipelines = Pipelines(cfg, args.data.resolve(), args.steps, args.workers)
    rt, loader = pipelines.runtime, type(pipelines.suite_loader.loader).__name__
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {rt.device}, precision "
          f"{rt.precision}, channels_last {rt.channels_last}, compile {rt.compile}, fused optimizer "
          f"{pipelines.trainer.optimizer.param_groups[0].get('fused')}; model {cfg.model.name} "
          f"(width {cfg.model.kwargs.width}), optimizer {cfg.optimizer.name}, batch {args.batch_size}; "
          f"suite loader: {loader}")
    print(f"{args.rounds} rounds x {args.steps} steps per pipeline; load average {os.getloadavg()[0]:.2f}\n")
    results = measure(pipelines, args.rounds)
    summary = report(results, args.steps * args.batch_size)
    rates = loader_rates(pipelines)
    print(f"loaders alone, no model: (a) torchvision {rates['torchvision']:.0f} images/s with {args.workers} "
          f"workers; (b) suite {rates['suite']:.0f} images/s on {pipelines.runtime.device}")
    print(f"load average at the end {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    print("bench-train: " + " ".join(f"{key}={value:.4f}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
