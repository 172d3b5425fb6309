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

    make bench-train                     # full size; rewrites docs/benchmarks.md's bench-train block (~2 min)
    python scripts/bench_train.py --quick --data <root>   # a smoke run of every code path; writes no doc

``--doc FILE`` (alias ``--readme``) rewrites the ``<!-- bench-train:begin/end -->`` block of FILE, e.g.
docs/benchmarks.md (full size only); ``--json``
keeps every figure. The last line is machine-readable:
    bench-train: vs_bare_loop=<(b)/(c)> data_wait=<fraction of (b)'s time> vs_torchvision_loader=<(b)/(a)>
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torchvision import transforms as T

from dualadam.reporting.bench_context import bench_context, describe, load_average, publish
from dualadam.tasks import validate_config
from dualadam.tasks.image.models import build_model
from dualadam.training.optimizers import build_optimizer
from dualadam.training.run import build_trainer
from dualadam.training.runtime import Runtime, resolve_runtime, seed_everything

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"vs_bare_loop": (">=", 0.95), "data_wait": ("<", 0.05)}
BLOCK = "bench-train"


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
        self.trainer = build_trainer(cfg, self.runtime, validate_config(cfg), sinks=[])
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


def authors_loader(data_root: Path, mean, std, batch_size: int, workers: int, seed: int, images: int | None = None):
    """The authors' CIFAR pipeline, over the image files (their copy was torchvision's arrays; here the real
    CIFAR-10 copy is JPEG, so each sample is also decoded, as any ImageFolder dataset is). ``images``: a seeded
    random subset of that many training images (all of them when None)."""
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    dataset = torchvision.datasets.ImageFolder(str(data_root / "cifar10" / "train"), transform=transform)
    if images is not None:
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images]
        dataset = torch.utils.data.Subset(dataset, keep.tolist())
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


def summarize(results: list[dict], images_per_run: int) -> dict:
    """Images/s and data wait of each pipeline (medians over rounds), and the paired ratios between them."""
    def ratio(num: str, den: str) -> dict:  # images/s ratio = inverse time ratio
        ratios = sorted(r[den][0] / r[num][0] for r in results)
        return {"median": statistics.median(ratios),
                "quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]}

    pipelines = {name: {"images_per_s": images_per_run / statistics.median(r[name][0] for r in results),
                        "data_wait": statistics.median(r[name][1] / r[name][0] for r in results)}
                 for name in PIPELINES}
    return {"pipelines": pipelines, "vs_bare_loop": ratio("suite", "bare"),
            "data_wait": pipelines["suite"]["data_wait"], "vs_torchvision_loader": ratio("suite", "torchvision")}

# ------------------------------------------------------------------------------------------- the block

PIPELINES = {
    "torchvision": "(a) authors' style: torchvision `ImageFolder`, PIL transforms per sample, DataLoader workers",
    "suite": "(b) the suite's default: `Trainer.train_one_epoch` with the loader `dataset.loader=auto` picks",
    "bare": "(c) bare loop on batches already on the device",
}
PIPELINE_HEADER = "| pipeline | images/s | waiting for data |"
RATIO_HEADER = "| | median | per-round quartiles | target | result |"
RATIOS = {"vs_bare_loop": "(b)/(c)", "data_wait": "data wait, share of (b)'s step time",
          "vs_torchvision_loader": "(b)/(a)"}
NOT_MEASURED = "not measured"


def met(key: str, value: float) -> str:
    if key not in TARGETS:
        return "reported"
    op, limit = TARGETS[key]
    return "PASS" if (value >= limit if op == ">=" else value < limit) else "MISS"


def pipeline_rows(summary: dict | None) -> list[list[str]]:
    rows = []
    for name, label in PIPELINES.items():
        got = (summary or {}).get("pipelines", {}).get(name)
        rows.append([label, *([f"{got['images_per_s']:.0f}", f"{got['data_wait']:.1%}"] if got else
                              [NOT_MEASURED, ""])])
    return rows


def ratio_rows(summary: dict | None) -> list[list[str]]:
    rows = []
    for key, label in RATIOS.items():
        op, limit = TARGETS.get(key, ("", None))
        target = "" if limit is None else f"{op} {limit:.0%}" if key == "data_wait" else f"{op} {limit}"
        if summary is None:
            rows.append([label, NOT_MEASURED, "", target, NOT_MEASURED])
            continue
        value = summary[key] if key == "data_wait" else summary[key]["median"]
        shown = f"**{value:.1%}**" if key == "data_wait" else f"**{value:.3f}**"
        spread = "" if key == "data_wait" else "{:.3f} .. {:.3f}".format(*summary[key]["quartiles"])
        rows.append([label, shown, spread, target, met(key, value)])
    return rows


def table(header: str, rows: list[list[str]]) -> str:
    aligns = ["---" if i == 0 or column.strip() in ("target", "result") else "---:"
              for i, column in enumerate(header.strip("|").split("|"))]
    return "\n".join([header, "| " + " | ".join(aligns) + " |", *("| " + " | ".join(r) + " |" for r in rows)])


def render_block(results: dict | None) -> str:
    """The README block; ``None`` renders the layout with nothing measured yet."""
    summary = None if results is None else results["summary"]
    if results is None:
        parts = ["Not yet measured by this version of the script: `make bench-train` fills this block."]
    else:
        s = results["setup"]
        parts = [f"Measured {describe(results['context'])}, by `{results['command']}` ({results['mode']}: "
                 f"{results['rounds']} rounds x {results['steps']} steps per pipeline, interleaved; ratios are "
                 f"medians of per-round paired ratios). All three pipelines train {s['model']}, {s['optimizer']}, "
                 f"precision {s['precision']}, batch {s['batch_size']}, on {s['device']}, from {s['data']}; "
                 f"(a) uses {s['workers']} DataLoader workers, (b) the {s['suite_loader']}."]
    parts += [table(PIPELINE_HEADER, pipeline_rows(summary)), table(RATIO_HEADER, ratio_rows(summary))]
    if results is not None:
        rates = results["loaders_alone"]
        parts.append(f"The loaders alone, without a model: (a) {rates['torchvision']:,.0f} images/s, (b) "
                     f"{rates['suite']:,.0f} images/s.")
    return "\n\n".join(parts) + "\n"


def block_layout() -> list[tuple[str, list[tuple[str, ...]]]]:
    """What a current block holds: each table's header and its rows' first column (the format test reads it)."""
    return [(PIPELINE_HEADER, [(r[0],) for r in pipeline_rows(None)]),
            (RATIO_HEADER, [(r[0],) for r in ratio_rows(None)])]

# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 steps: a smoke run, not a measurement")
    parser.add_argument("--rounds", type=int, default=None, help="default 25 (quick: 3)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per pipeline per round; "
                        "default 4 (quick: 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a), the authors' 2")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("DUALADAM_DATA") or "data"),
                        help="data root holding cifar10/train/<class>/*.jpg (`make data` puts it there)")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/bench_train.json"))
    parser.add_argument("--doc", "--readme", dest="doc", type=Path, default=None,
                        help="rewrite this Markdown file's bench-train block (make bench-train: docs/benchmarks.md)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for all three, e.g. model.kwargs.width=16")
    args = parser.parse_args(argv)
    if not (args.data / "cifar10" / "train").is_dir():
        parser.error(f"{args.data.resolve() / 'cifar10' / 'train'} is missing: run `make data` (unpacks the "
                     "shared CIFAR-10 copy) or pass --data <root>")
    if args.doc is not None and args.quick:
        parser.error("--doc takes a full-size run: drop --quick, or drop --doc")
    if args.doc is not None and not args.doc.is_file():
        parser.error(f"--doc {args.doc}: no such file")
    args.rounds = args.rounds or (3 if args.quick else 25)
    args.steps = args.steps or (2 if args.quick else 4)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    random.seed(0)
    cfg = suite_config(args.data.resolve(), args.steps, args.batch_size, args.overrides)
    pipelines = Pipelines(cfg, args.data.resolve(), args.steps, args.workers)
    rt = pipelines.runtime
    results = {"mode": "quick (a smoke run, not a measurement)" if args.quick else "full size",
               "command": " ".join(["python", "scripts/bench_train.py", *(sys.argv[1:] if argv is None else argv)]),
               "rounds": args.rounds, "steps": args.steps, "context": bench_context(rt.device),
               "setup": {"model": f"{cfg.model.name} (width {cfg.model.kwargs.get('width', 'default')})",
                         "optimizer": cfg.optimizer.name, "precision": rt.precision, "batch_size": args.batch_size,
                         "device": str(rt.device), "channels_last": rt.channels_last,
                         "fused_optimizer": pipelines.trainer.optimizer.param_groups[0].get("fused"),
                         "data": "the real CIFAR-10 copy (JPEG)", "workers": args.workers,
                         "suite_loader": type(pipelines.suite_loader.loader).__name__}}
    print(f"bench-train, {results['mode']}: {describe(results['context'])}; {results['setup']}", flush=True)
    results["summary"] = summarize(measure(pipelines, args.rounds), args.steps * args.batch_size)
    results["loaders_alone"] = loader_rates(pipelines, batches=3 if args.quick else 40)
    results["context"]["load_end"] = load_average()
    publish(results, BLOCK, render_block(results), args.json, args.doc)
    summary = results["summary"]
    print(f"bench-train: vs_bare_loop={summary['vs_bare_loop']['median']:.4f} data_wait={summary['data_wait']:.4f} "
          f"vs_torchvision_loader={summary['vs_torchvision_loader']['median']:.4f}")


if __name__ == "__main__":
    main()
