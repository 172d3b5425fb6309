"""``make gpu-check``: the checks that need a GPU, in one prepared run of at most 8 minutes on one GPU.

Stages (each in its own process with a time limit, so one that hangs cannot take the others with it):
  cuda_tests   pytest on the tests that need CUDA (every test with "cuda" in its name, slow ones included);
               they skip with a reason on a machine without CUDA
  golden       the authors' trajectories (tests/golden.py's loader and replay) on the device, on every path
               (reference, foreach, fused), float64: max relative error <= 1e-10
  bench_optim  scripts/bench_optim.py on the device, ResNet-18 and the LoRA set, against torch's fused Adam
               (and foreach Adam): paired per-round ratios, each timed run ended by a synchronize
  train        one epoch of the paper's ResNet-18 (model=resnet18_cifar), bf16 (fp32 on a CPU), batch 128:
               (b) the suite's fast path (a Trainer from build_trainer, its in-memory loader) and
               (a) an authors'-style loop: torchvision ImageFolder, RandomCrop(32, padding=4) + flip + ToTensor +
                   Normalize in 2 DataLoader workers, the same model, optimizer and bf16 autocast.
               (b) runs two epochs, the first holding the one-off costs (compiling the fused optimizer step,
               cuDNN autotuning); (a) is timed over one epoch from its first batch request after a 3-batch
               warm-up of its model, so its worker start-up counts, as it does for the authors every epoch.

Data: ``--data`` takes a data root holding cifar10/train/<class>/*.jpg or an image-folder tarball such as
../shared/data/cifar10-jpeg.tar.gz (unpacked under the output folder); by default the shared tarball when it
is there, else a synthetic CIFAR-shaped set of random JPEGs (50,000 + 10,000; the results file says so).
The golden trajectories come from tests/golden.py's default place or ``--golden FILE``.

    make gpu-check                                    # on a GPU machine: everything, at full size
    python scripts/gpu_check.py --device cpu          # on a CPU: quick sizes (128 images, tiny bench sets)

Writes ``outputs/gpu_check/gpu_check.json`` after every stage and prints a summary; ``--doc FILE``
(alias ``--readme``; make gpu-check: docs/benchmarks.md) rewrites FILE's ``<!-- gpu-check:begin/end -->`` block
from the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from dualadam.atomic_files import atomic_write_json, strict_json
from dualadam.reporting.bench_context import bench_context, describe, load_average, publish

REPO = Path(__file__).resolve().parents[1]
BLOCK = "gpu-check"
SHARED_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
GOLDEN_TOLERANCE = 1e-10
GOLDEN_PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# Seconds per stage. On CUDA they add up to 8 minutes; a CPU compiles far slower, so it gets more.
TIMEOUTS = {"cuda": {"cuda_tests": 60, "golden": 90, "bench_optim": 180, "train": 150},
            "cpu": {"cuda_tests": 300, "golden": 600, "bench_optim": 900, "train": 900}}


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_stage(command: list[str], timeout: float, env: dict | None = None) -> tuple[str, dict]:
    """(stdout, ending): ending is {} when the process finished with exit 0, else its error."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        return out, {"error": f"timed out after {timeout:.0f} s"}
    ending = {"seconds": round(time.perf_counter() - start, 1)}
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        ending["error"] = f"exit {done.returncode}: {tail[-600:]}"
    return done.stdout, ending


def last_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}

# ------------------------------------------------------------------------------------------- stages


def cuda_tests(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        out, ending = run_stage(python("-m", "pytest", "-m", "", "-k", "cuda", "-q", "-p", "no:cacheprovider",
                                       f"--junitxml={xml}", "tests"), args.timeouts["cuda_tests"])
        tests = junit_outcomes(xml) if xml.is_file() else []
    if tests and ending.get("error", "").startswith("exit 1:"):
        del ending["error"]  # pytest's exit 1 means some tests failed: the counts and outcomes below say which
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "skipped")}
    return {**ending, "counts": counts, "tests": tests, "pass": bool(tests) and counts["failed"] == 0
            and "error" not in ending}


def junit_outcomes(xml: Path) -> list[dict]:
    outcomes = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}.get(getattr(problem, "tag", ""),
                                                                                   "passed")
        outcomes.append({"test": name, "outcome": outcome,
                         **({"message": (problem.get("message") or "")[:300]} if problem is not None else {})})
    return outcomes


def golden(args) -> dict:
    command = python(__file__, "--stage", "golden", "--device", args.device)
    out, ending = run_stage(command, args.timeouts["golden"],
                            env={"DUALADAM_GOLDEN": str(args.golden)} if args.golden else None)
    return {**ending, **last_json(out)}


def golden_in_process(device: str) -> dict:
    """Replays every golden run on ``device`` (torch's default device inside the replay) on every path."""
    sys.path.insert(0, str(REPO))
    from dualadam import DualAdam
    from tests.golden import golden_path, load_runs, max_relative_error, replay

    if not golden_path().is_file():
        return {"skipped": f"no golden trajectories at {golden_path()}: pass --golden FILE"}
    runs, result, seen = load_runs(), {}, set()

    def factory(kwargs):
        def make(groups, case):
            seen.add(str(groups[0]["params"][0].device))
            return DualAdam(groups, lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"],
                            weight_decay=case["weight_decay"], switch_rate=case["switch_rate"], **kwargs)
        return make

    for path, kwargs in GOLDEN_PATHS.items():
        with torch.device(device):
            worst = max(max_relative_error(run, replay(run, factory(kwargs))) for run in runs)
        result[path] = {"max_relative_error": worst, "pass": worst <= GOLDEN_TOLERANCE}
    return {"runs": len(runs), "param_devices": sorted(seen), "paths": result,
            "pass": all(r["pass"] for r in result.values())}


def bench_optim(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "bench.json"
        per_case = args.timeouts["bench_optim"] / 2 - 5
        command = python("scripts/bench_optim.py", "--device", args.device, "--cases", "resnet18", "lora",
                         "--no-compile-probe", "--case-timeout", str(per_case), "--json", str(out_json),
                         *(["--quick"] if args.quick else []))
        out, ending = run_stage(command, args.timeouts["bench_optim"])
        bench = json.loads(out_json.read_text()) if out_json.is_file() else {}
    measured = {name: case["measurements"] for name, case in bench.get("cases", {}).items()}
    return {**ending, "mode": bench.get("mode"), "rounds": bench.get("rounds"), "steps": bench.get("steps"),
            "cases": measured}


def train(args) -> dict:
    command = python(__file__, "--stage", "train", "--device", args.device, "--out", str(args.out),
                     "--size", "quick" if args.quick else "full", *(["--data", str(args.data)] if args.data else []))
    out, ending = run_stage(command, args.timeouts["train"])
    return {**ending, **last_json(out)}


STAGES = {"cuda_tests": cuda_tests, "golden": golden, "bench_optim": bench_optim, "train": train}

# ------------------------------------------------------------------------------- the training epoch

QUICK_IMAGES = 128  # --quick: one batch of 128 images per epoch instead of 50,000


def prepare_data(args, out_dir: Path) -> tuple[Path, str]:
    """(data root holding cifar10/, what it is): --data, else the shared tarball, else synthetic JPEGs."""
    from dualadam.tasks.image.data.prepare import unpack_image_folder_tarball

    source = args.data or (SHARED_TARBALL if SHARED_TARBALL.is_file() else None)
    if source is not None and Path(source).is_dir():
        if not (Path(source) / "cifar10" / "train").is_dir():
            raise SystemExit(f"--data {source}: expected {source}/cifar10/train/<class>/*.jpg")
        return Path(source), f"CIFAR-10 image folder {source}"
    if source is not None:
        root = out_dir / ("data-quick" if args.quick else "data")
        if not (root / "cifar10" / "train").is_dir():  # quick: 60 images per class and split are plenty
            unpack_image_folder_tarball(Path(source), root / "cifar10", per_class=60 if args.quick else None)
        return root, f"CIFAR-10 from {Path(source).name}"
    root = out_dir / "synthetic"
    train, test = (QUICK_IMAGES, 100) if args.quick else (50_000, 10_000)
    write_synthetic_cifar(root / "cifar10", train, test)
    return root, f"SYNTHETIC CIFAR-shaped JPEGs ({train} train, {test} test): no CIFAR-10 copy was given"


def write_synthetic_cifar(folder: Path, train: int, test: int) -> None:
    """Random 32x32 JPEGs in CIFAR-10's image-folder layout (a colour per class plus noise), written once."""
    import numpy as np
    from PIL import Image

    if (folder / "done").is_file():
        return
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            label = i % 10
            pixels = np.clip(rng.normal(25 * label, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = folder / split / f"class{label}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
    (folder / "done").touch()


def precision_for(device: str) -> str:
    """bf16 on a GPU, as the paper's runs; a CPU without bf16 instructions (AVX-512 BF16, AMX) runs bf16
    convolutions many times slower than fp32, so there the epoch runs in fp32 (the results file says which)."""
    return "bf16" if device.startswith("cuda") else "32"


def train_config(root: Path, device: str, images: int | None):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from dualadam.tasks import validate_config

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "dataset=cifar10", f"dataset.root={root}", "dataset.download=false", "model=resnet18_cifar",
            "optimizer=dualadam", "logger=none", "trainer.progress=false", "trainer.batch_size=128",
            f"trainer.precision={precision_for(device)}", f"trainer.device={device}", "trainer.epochs=2",
            f"dataset.train_subset={images if images else 'null'}", "dataset.test_subset=1000"])
    with open_dict(cfg):
        cfg.run_dir = str(REPO / "outputs" / "gpu_check" / "run")  # unused: no sinks, no checkpoints
    validate_config(cfg)
    return cfg


def train_in_process(args) -> dict:
    import bench_train  # the sibling script: the authors' loader and the bare step

    from dualadam.tasks import TASKS
    from dualadam.tasks.image.models import build_model
    from dualadam.training.optimizers import build_optimizer
    from dualadam.training.run import build_trainer
    from dualadam.training.runtime import resolve_runtime, seed_everything

    root, data = prepare_data(args, args.out.parent)
    images = QUICK_IMAGES if args.quick else None
    cfg = train_config(root, args.device, images)
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.trainer)
    trainer = build_trainer(cfg, runtime, TASKS[cfg.task], sinks=[])
    first, second = trainer.train_one_epoch(0), trainer.train_one_epoch(1)
    suite = {"images_per_s": second.samples / second.seconds, "first_epoch_images_per_s": first.samples / first.seconds,
             "images": second.samples, "loader": type(trainer.task.train_loader).__name__,
             "fused_optimizer": bool(trainer.optimizer.param_groups[0].get("fused"))}

    partial = {"data": data, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
               "precision": runtime.precision, "channels_last": runtime.channels_last, "suite": suite}
    print(strict_json({**partial, "authors": None}), flush=True)  # kept if the time limit stops (a)

    info = trainer.task.info
    model = build_model(cfg.model, info).to(runtime.device, memory_format=runtime.memory_format).train()
    learner = bench_train.Learner(model, build_optimizer(cfg.optimizer, model, fused=runtime.fused_optimizer),
                                  runtime)
    loader = bench_train.authors_loader(root, info.mean, info.std, 128, 2, cfg.seed, images)
    to_device = {"device": runtime.device, "non_blocking": True}
    for _, (x, y) in zip(range(3), loader):  # warm-up: compile, autotune (the suite's first epoch had its own)
        learner.step(x.to(memory_format=runtime.memory_format, **to_device), y.to(**to_device))
    bench_train.synchronize(runtime.device)
    start, count = time.perf_counter(), 0
    for x, y in loader:
        learner.step(x.to(memory_format=runtime.memory_format, **to_device), y.to(**to_device))
        count += len(y)
    bench_train.synchronize(runtime.device)
    authors = {"images_per_s": count / (time.perf_counter() - start), "images": count, "workers": 2}
    return {**partial, "authors": authors, "suite_over_authors": suite["images_per_s"] / authors["images_per_s"]}

# --------------------------------------------------------------------------------------------- report


def stage_lines(name: str, got: dict) -> list[str]:
    """The stage's summary, and its error when it stopped early (timed out, crashed)."""
    try:
        lines = stage_summary(name, got)
    except (KeyError, TypeError):  # the stage stopped before it produced that figure
        lines = [f"- **{name}**: no result"]
    return lines + ([f"  - {name} stopped: {got['error']}"] if "error" in got else [])


def stage_summary(name: str, got: dict) -> list[str]:
    if name == "cuda_tests":
        c = got["counts"]
        skips = sorted({t.get("message", "") for t in got["tests"] if t["outcome"] == "skipped"})
        return [f"- **CUDA tests** (`pytest -m '' -k cuda`): {c['passed']} passed, {c['failed']} failed, "
                f"{c['skipped']} skipped{' (' + '; '.join(skips) + ')' if skips else ''}"]
    if name == "golden":
        if "skipped" in got:
            return [f"- **golden parity**: skipped, {got['skipped']}"]
        paths = ", ".join(f"{p} {r['max_relative_error']:.1e} {'PASS' if r['pass'] else 'FAIL'}"
                          for p, r in got["paths"].items())
        return [f"- **golden parity** ({got['runs']} runs, float64, params on {', '.join(got['param_devices'])}; "
                f"max relative error, target <= {GOLDEN_TOLERANCE:g}): {paths}"]
    if name == "bench_optim":
        return bench_lines(got)
    t = got
    if not t.get("authors"):
        return [f"- **one epoch**: (b) the suite's fast path {t['suite']['images_per_s']:,.0f} images/s; (a) the "
                "authors'-style loop did not finish"]
    return [f"- **one epoch, {t['model']}, {t['optimizer']}, {t['precision']}, batch 128** on {t['data']}: "
            f"(b) the suite's fast path ({t['suite']['loader']}, fused optimizer {t['suite']['fused_optimizer']}) "
            f"**{t['suite']['images_per_s']:,.0f} images/s** ({t['suite']['first_epoch_images_per_s']:,.0f} in its "
            f"first epoch, compile and autotuning included); (a) the authors'-style DataLoader loop "
            f"**{t['authors']['images_per_s']:,.0f} images/s** ({t['authors']['workers']} workers); "
            f"(b)/(a) = **{t['suite_over_authors']:.2f}** ({t['suite']['images']} images per epoch)"]


def bench_lines(got: dict) -> list[str]:
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_optim import MEASUREMENTS

    lines = [f"- **bench-optim** on the device ({got.get('mode')}, {got.get('rounds')} rounds x {got.get('steps')} "
             f"steps; ratio DualAdam / torch, median of paired per-round ratios):"]
    for case, measured in got.get("cases", {}).items():
        cells = []
        for key, m in MEASUREMENTS.items():
            r = measured.get(key, {})
            shown = (f"{r['ratio']:.3f} {'PASS' if r['ratio'] <= m.target else 'MISS'}" if "ratio" in r
                     else r.get("error", "not measured"))
            cells.append(f"{m.phase} `{m.dualadam}` vs `{m.torch}`: {shown} (<= {m.target})")
        lines.append(f"  - {case}: " + "; ".join(cells))
    return lines


def render(results: dict) -> str:
    head = (f"`{results['command']}` ({results['mode']}), {describe(results['context'])}. "
            f"Results file: `{results['results_file']}`.")
    lines = [line for name, got in results["stages"].items() for line in stage_lines(name, got)]
    return head + "\n\n" + "\n".join(lines) + "\n"

# ----------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--size", choices=["quick", "full"], default=None,
                        help="default: full on CUDA, quick on a CPU (128 images, tiny bench sets)")
    parser.add_argument("--data", type=Path, default=None, help="data root with cifar10/train, or a tarball")
    parser.add_argument("--golden", type=Path, default=None, help="golden trajectories JSON (tests/golden.py's "
                        "default place otherwise)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check/gpu_check.json"))
    parser.add_argument("--doc", "--readme", dest="doc", type=Path, default=None,
                        help="rewrite this Markdown file's gpu-check block (make gpu-check: docs/benchmarks.md)")
    parser.add_argument("--stage", choices=["golden", "train"], help=argparse.SUPPRESS)  # inside a stage process
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here; on a CPU use --device cpu")
    for name, path in (("--data", args.data), ("--golden", args.golden), ("--doc", args.doc)):
        if path is not None and not path.exists():
            parser.error(f"{name} {path}: no such file or folder")
    args.quick = (args.size or ("full" if args.device.startswith("cuda") else "quick")) == "quick"
    args.out = args.out.resolve()
    args.timeouts = TIMEOUTS["cuda" if args.device.startswith("cuda") else "cpu"]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.stage:  # inside a stage's own process: print its result as the last JSON line
        result = golden_in_process(args.device) if args.stage == "golden" else train_in_process(args)
        print(strict_json(result), flush=True)
        return
    results = {"command": " ".join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
               "mode": "quick sizes" if args.quick else "full size", "context": bench_context(args.device),
               "results_file": os.path.relpath(args.out, REPO), "stages": {}}
    print(f"gpu-check, {results['mode']}: {describe(results['context'])}", flush=True)
    for name in args.stages:
        print(f"  {name} ...", flush=True)
        results["stages"][name] = STAGES[name](args)
        results["context"]["load_end"] = load_average()
        atomic_write_json(args.out, results, indent=1)   # what is done survives a later stage
    publish(results, BLOCK, render(results), args.out, args.doc)


if __name__ == "__main__":
    main()
