"""Optimizer step time of DualAdam against torch's Adam, and the cold-compile time of the fused blend step.

Cases (parameter sets, each tensor with a fixed small gradient):
  resnet18          ResNet-18 (ImageNet head; timm's and torchvision's shapes): 62 tensors, 11.7 M params
  resnet18_9groups  the same tensors in 9 param groups (stem + head; each stage's conv weights with weight
                    decay and its norm parameters without), each stage with its own lr
  lora              LoRA r=8 on q, k, v, o of SmolLM2-135M (30 layers, hidden 576, kv dim 192): 240 tensors,
                    A (8, in) and B (out, 8)

Steady state (per case, one process, so machine load hits both contenders alike): each measurement pairs a
DualAdam with torch; every round runs both for ``--steps`` steps in a freshly shuffled order; the ratio is
taken within a round, and the figure is the median of those paired ratios over ``--rounds`` rounds. One
torch thread. On CUDA each timed run ends with a synchronize.
  blend, foreach        DualAdam(foreach=True) mid-blend (alpha ~ 1)   vs torch Adam(foreach=True)   <= 1.25
  blend, fused          DualAdam(fused=True) mid-blend                  vs torch Adam(fused=True)     <= 1.15
  after switch, default DualAdam(params, ...) with alpha = 0            vs torch Adam(fused=True)     <= 1.05
(torch's AdamW where the case has weight decay: the same step as DualAdam's decoupled decay.)

Cold compile (per case, in a fresh process whose inductor and Triton caches are an empty temporary folder,
so the FX graph, AOTAutograd and kernel caches all start empty): the first blend step of DualAdam(fused=True)
minus a steady step. The 9-group and LoRA figures are reported as ratios to the 1-group one (target <= 1.5).
A compile that does not finish within ``--compile-timeout`` seconds is reported as timed out, and that case's
fused steady-state measurement is skipped (it would only time out again).

    make bench-optim                      # full size, rewrites docs/benchmarks.md's bench-optim block (~5-25 min)
    python scripts/bench_optim.py --quick # tiny sizes, a smoke run of every code path; writes no doc

``--doc FILE`` (alias ``--readme``) rewrites the ``<!-- bench-optim:begin/end -->`` block of FILE, e.g.
docs/benchmarks.md (full size only); ``--json``
keeps every figure. The last line printed is machine-readable: ``bench-optim: <key>=<value> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dualadam import DualAdam
from dualadam.atomic_files import strict_json
from dualadam.reporting.bench_context import bench_context, describe, load_average, publish

BLOCK = "bench-optim"
BLEND_SWITCH_RATE, AFTER_SWITCH_RATE = 8e-5, 1.0  # 1.0: alpha is 0 from the first step on
COMPILE_TARGET = 1.5  # cold compile of the 9-group and LoRA sets / of ResNet-18 in one group


@dataclass(frozen=True)
class Measurement:
    phase: str
    dualadam: str  # how DualAdam is constructed, as the table shows it
    torch: str
    target: float
    switch_rate: float
    dualadam_kwargs: dict
    torch_kwargs: dict


MEASUREMENTS = {
    "blend_foreach": Measurement("blend", "foreach=True", "foreach=True", 1.25, BLEND_SWITCH_RATE,
                                 {"foreach": True}, {"foreach": True}),
    "blend_fused": Measurement("blend", "fused=True", "fused=True", 1.15, BLEND_SWITCH_RATE,
                               {"fused": True}, {"fused": True}),
    "after_default": Measurement("after switch", "default", "fused=True", 1.05, AFTER_SWITCH_RATE,
                                 {}, {"fused": True}),
}


def run_order(keys: list[str]) -> list[str]:
    """The fused blend last: the only one that compiles, so a timeout there keeps the others' figures."""
    return sorted(keys, key=lambda key: bool(MEASUREMENTS[key].dualadam_kwargs.get("fused")))


# ---------------------------------------------------------------------------------------------- cases


def resnet18_shapes(width: int = 64, num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of ResNet-18's parameters in module order; width 64 is timm's/torchvision's resnet18."""
    shapes = [("conv1.weight", (width, 3, 7, 7)), ("bn1.weight", (width,)), ("bn1.bias", (width,))]
    in_ch = width
    for stage in range(1, 5):
        out_ch = width * 2 ** (stage - 1)
        for block in range(2):
            prefix, block_in = f"layer{stage}.{block}", in_ch if block == 0 else out_ch
            shapes += [(f"{prefix}.conv1.weight", (out_ch, block_in, 3, 3)), (f"{prefix}.bn1.weight", (out_ch,)),
                       (f"{prefix}.bn1.bias", (out_ch,)), (f"{prefix}.conv2.weight", (out_ch, out_ch, 3, 3)),
                       (f"{prefix}.bn2.weight", (out_ch,)), (f"{prefix}.bn2.bias", (out_ch,))]
            if block == 0 and block_in != out_ch:
                shapes += [(f"{prefix}.downsample.0.weight", (out_ch, block_in, 1, 1)),
                           (f"{prefix}.downsample.1.weight", (out_ch,)), (f"{prefix}.downsample.1.bias", (out_ch,))]
        in_ch = out_ch
    return shapes + [("fc.weight", (num_classes, in_ch)), ("fc.bias", (num_classes,))]


def lora_shapes(layers: int = 30, hidden: int = 576, kv_dim: int = 192, rank: int = 8):
    """(name, shape) of LoRA adapters on q, k, v, o of a SmolLM2-135M-like model: A (rank, in), B (out, rank)."""
    outs = {"q_proj": hidden, "k_proj": kv_dim, "v_proj": kv_dim, "o_proj": hidden}
    return [(f"layers.{i}.{proj}.lora_{ab}", (rank, hidden) if ab == "A" else (out, rank))
            for i in range(layers) for proj, out in outs.items() for ab in "AB"]


def one_group(shapes) -> list[dict]:
    return [{"names": [name for name, _ in shapes], "lr": 1e-4, "weight_decay": 0.0}]


def resnet18_nine_groups(shapes) -> list[dict]:
    """Stem + head in one group; per stage, conv weights (weight decay) and norm parameters (none)."""
    groups = {"stem+head": {"names": [], "lr": 1e-4, "weight_decay": 0.0}}
    for stage in range(1, 5):
        lr = 1e-4 * 0.8 ** (4 - stage)  # layer-wise lr decay: every group has its own hyperparameters
        groups[f"layer{stage} weights"] = {"names": [], "lr": lr, "weight_decay": 5e-4}
        groups[f"layer{stage} norms"] = {"names": [], "lr": lr, "weight_decay": 0.0}
    for name, shape in shapes:
        stage = name.split(".")[0]
        key = "stem+head" if not stage.startswith("layer") else f"{stage} {'weights' if len(shape) > 1 else 'norms'}"
        groups[key]["names"].append(name)
    return list(groups.values())


@dataclass(frozen=True)
class Case:
    title: str
    shapes: Callable[[bool], list]  # quick -> [(name, shape)]
    groups: Callable[[list], list[dict]]


CASES = {
    "resnet18": Case("ResNet-18, 1 group", lambda quick: resnet18_shapes(*((8, 10) if quick else ())), one_group),
    "resnet18_9groups": Case("ResNet-18, 9 groups", lambda quick: resnet18_shapes(*((8, 10) if quick else ())),
                             resnet18_nine_groups),
    "lora": Case("LoRA r=8, SmolLM2-135M q,k,v,o", lambda quick: lora_shapes(*((2, 64, 32) if quick else ())),
                 one_group),
}
COMPILE_BASELINE = "resnet18"


def make_groups(case: Case, quick: bool, device: torch.device, seed: int = 0) -> list[dict]:
    """The case's param groups, each tensor with a fixed gradient (the same values for every contender)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = dict(case.shapes(quick))
    groups = []
    for group in case.groups(case.shapes(quick)):
        params = []
        for name in group["names"]:
            p = (torch.randn(shapes[name], generator=generator) * 0.02).to(device).requires_grad_()
            p.grad = (torch.randn(shapes[name], generator=generator) * 1e-3).to(device)
            params.append(p)
        groups.append({"params": params, "lr": group["lr"], "weight_decay": group["weight_decay"]})
    return groups


def case_size(case: Case, quick: bool) -> dict:
    shapes = case.shapes(quick)
    return {"tensors": len(shapes), "params": sum(torch.Size(s).numel() for _, s in shapes),
            "groups": len(case.groups(shapes))}

# ------------------------------------------------------------------------------------- one process each


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(opt: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def baseline(case: Case) -> type[torch.optim.Optimizer]:
    """torch's Adam; AdamW where the case has weight decay, which then matches DualAdam's decoupled decay."""
    any_decay = any(g["weight_decay"] for g in case.groups(case.shapes(False)))
    return torch.optim.AdamW if any_decay else torch.optim.Adam


def contenders(case: Case, m: Measurement, quick: bool, device: torch.device) -> dict:
    return {"dualadam": DualAdam(make_groups(case, quick, device), lr=1e-4, switch_rate=m.switch_rate,
                                 **m.dualadam_kwargs),
            "torch": baseline(case)(make_groups(case, quick, device), lr=1e-4, **m.torch_kwargs)}


def steady_state(case: Case, m: Measurement, quick: bool, device: torch.device, rounds: int, steps: int):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opts = contenders(case, m, quick, device)
        for opt in opts.values():  # warm-up: state allocation, the fused blend's compile (warm cache)
            time_steps(opt, 2, device)
        per_round = []
        for _ in range(rounds):
            order = random.sample(list(opts), len(opts))
            per_round.append({name: time_steps(opts[name], steps, device) for name in order})
    ratios = sorted(r["dualadam"] / r["torch"] for r in per_round)
    return {"ms": {name: 1e3 * statistics.median(r[name] for r in per_round) for name in opts},
            "ratio": statistics.median(ratios), "quartiles": [ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]],
            "warnings": sorted({str(w.message) for w in caught})}


def cold_compile(case: Case, quick: bool, device: torch.device) -> dict:
    """First blend step of DualAdam(fused=True) minus the median of three later steps, in seconds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = DualAdam(make_groups(case, quick, device), lr=1e-4, switch_rate=BLEND_SWITCH_RATE, fused=True)
        first = time_steps(opt, 1, device)
        steady = statistics.median(time_steps(opt, 1, device) for _ in range(3))
    return {"seconds": first - steady, "first_step_s": first, "steady_step_s": steady,
            "warnings": sorted({str(w.message) for w in caught})}


def worker(args) -> None:
    """Inside a child process: print one JSON line per finished measurement (a timeout keeps the earlier)."""
    torch.set_num_threads(args.threads)
    random.seed(0)
    device, case = torch.device(args.device), CASES[args.case]
    if args.worker == "compile":
        print(strict_json({"compile": cold_compile(case, args.quick, device)}), flush=True)
        return
    for key in run_order(args.measure):
        result = steady_state(case, MEASUREMENTS[key], args.quick, device, args.rounds, args.steps)
        print(strict_json({"measurement": key, **result}), flush=True)

# ----------------------------------------------------------------------------------------- the parent


def run_worker(args, case: str, extra: list[str], cache_dir: str, timeout: float) -> tuple[list[dict], dict]:
    """The JSON lines a child printed, and how it ended: {} when it finished, else {"error", "timed_out"}."""
    command = [sys.executable, __file__, "--worker", *extra, "--case", case, "--device", args.device,
               "--threads", str(args.threads), "--rounds", str(args.rounds), "--steps", str(args.steps),
               *(["--quick"] if args.quick else [])]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton"),
           "OMP_NUM_THREADS": str(args.threads)}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        out, ending = done.stdout, {}
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
            ending = {"error": f"failed (exit {done.returncode}): {last}", "timed_out": False}
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        ending = {"error": f"timed out after {timeout:.0f} s", "timed_out": True, "limit_s": timeout}
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], ending


def measure_case(args, name: str, cache_root: str) -> dict:
    """Cold compile in a fresh cache (when asked), then the steady state reusing that now-warm cache."""
    result = {**case_size(CASES[name], args.quick), "measurements": {}}
    cache_dir = tempfile.mkdtemp(prefix=f"{name}-", dir=cache_root)
    measure = list(MEASUREMENTS)
    if args.compile_probe:
        lines, ending = run_worker(args, name, ["compile"], cache_dir, args.compile_timeout)
        result["compile"] = lines[0]["compile"] if lines else ending
        if not lines:
            measure.remove("blend_fused")
            result["measurements"]["blend_fused"] = {"error": f"not measured: the cold compile {ending['error']}"}
    lines, ending = run_worker(args, name, ["steady", "--measure", *measure], cache_dir, args.case_timeout)
    for line in lines:
        result["measurements"][line.pop("measurement")] = line
    for key in measure:
        result["measurements"].setdefault(key, {"error": f"not measured: the case's process {ending.get('error')}"})
    return result


def compile_ratios(cases: dict) -> dict[str, dict]:
    """Each case's cold compile over ResNet-18's in one group; a timeout gives a lower bound."""
    base = cases.get(COMPILE_BASELINE, {}).get("compile", {})
    ratios = {}
    for name, case in cases.items():
        if name == COMPILE_BASELINE or "compile" not in case:
            continue
        own = case["compile"]
        if "seconds" not in base:
            ratios[name] = {"error": "no 1-group figure to compare with"}
        elif "seconds" in own:
            ratios[name] = {"ratio": own["seconds"] / base["seconds"]}
        elif own.get("timed_out"):
            ratios[name] = {"at_least": own["limit_s"] / base["first_step_s"], "error": own["error"]}
        else:
            ratios[name] = {"error": own["error"]}
    return ratios

# ------------------------------------------------------------------------------------------- the block

STEADY_HEADER = "| case | phase | DualAdam | torch | DualAdam ms/step | torch ms/step | ratio | target | result |"
COMPILE_HEADER = "| cold compile of the fused blend step | seconds | vs ResNet-18, 1 group | target | result |"
NOT_MEASURED = "not measured"


def verdict(value: float | None, target: float) -> str:
    return NOT_MEASURED if value is None else "PASS" if value <= target else "MISS"


def steady_rows(results: dict | None) -> list[list[str]]:
    rows = []
    for name, case in CASES.items():
        for key, m in MEASUREMENTS.items():
            got = (results or {}).get("cases", {}).get(name, {}).get("measurements", {}).get(key, {})
            cells = ([f"{got['ms']['dualadam']:.3g}", f"{got['ms']['torch']:.3g}", f"**{got['ratio']:.3f}**"]
                     if "ratio" in got else ["", "", got.get("error", NOT_MEASURED)])
            rows.append([case.title, m.phase, f"`{m.dualadam}`", f"{baseline(case).__name__} `{m.torch}`", *cells,
                         f"<= {m.target}", verdict(got.get("ratio"), m.target)])
    return rows


def compile_rows(results: dict | None) -> list[list[str]]:
    cases = (results or {}).get("cases", {})
    ratios = compile_ratios(cases)
    rows = []
    for name, case in CASES.items():
        own = cases.get(name, {}).get("compile", {})
        seconds = f"{own['seconds']:.1f}" if "seconds" in own else own.get("error", NOT_MEASURED)
        if name == COMPILE_BASELINE:
            rows.append([case.title, seconds, "1" if "seconds" in own else "", "", ""])
            continue
        ratio = ratios.get(name, {})
        shown = (f"**{ratio['ratio']:.2f}**" if "ratio" in ratio else
                 f"> {ratio['at_least']:.1f}" if "at_least" in ratio else "")
        result = verdict(ratio.get("ratio"), COMPILE_TARGET) if "at_least" not in ratio else "MISS"
        rows.append([case.title, seconds, shown, f"<= {COMPILE_TARGET}", result])
    return rows


def table(header: str, rows: list[list[str]]) -> str:
    aligns = ["---:" if column.strip().endswith(("ms/step", "seconds", "ratio", "target")) or "vs " in column
              else "---" for column in header.strip("|").split("|")]
    return "\n".join([header, "| " + " | ".join(aligns) + " |", *("| " + " | ".join(r) + " |" for r in rows)])


def render_block(results: dict | None) -> str:
    """The README block; ``None`` renders the layout with nothing measured yet."""
    if results is None:
        head = "Not yet measured by this version of the script: `make bench-optim` fills this block."
    else:
        head = (f"Measured {describe(results['context'])}, by `{results['command']}` ({results['mode']}: "
                f"{results['rounds']} rounds x {results['steps']} steps per contender, device "
                f"{results['context']['device']}). Ratios are medians of paired per-round ratios.")
    measured = (results or {}).get("cases", {})
    sizes = "; ".join(f"{c.title}: {s['tensors']} tensors, {s['params'] / 1e6:.2f} M params, "
                      f"{s['groups']} group{'s' * (s['groups'] > 1)}"
                      for c, s in ((c, measured.get(name) or case_size(c, False)) for name, c in CASES.items()))
    notes = [f"- {CASES[name].title}, {key}: {text}" for name, case in (results or {}).get("cases", {}).items()
             for key, m in [*case["measurements"].items(), ("compile", case.get("compile", {}))]
             for text in m.get("warnings", [])]
    parts = [head, f"Cases: {sizes}.", table(STEADY_HEADER, steady_rows(results)),
             table(COMPILE_HEADER, compile_rows(results))]
    if notes:
        parts.append("Warnings raised while measuring:\n\n" + "\n".join(notes))
    return "\n\n".join(parts) + "\n"


def block_layout() -> list[tuple[str, list[tuple[str, ...]]]]:
    """What a current block holds: each table's header and its rows' key columns (the format test reads it)."""
    return [(STEADY_HEADER, [tuple(r[:3]) for r in steady_rows(None)]),
            (COMPILE_HEADER, [(r[0],) for r in compile_rows(None)])]


def summary_line(results: dict) -> str:
    values = {f"{name}_{key}": m["ratio"] for name, case in results["cases"].items()
              for key, m in case["measurements"].items() if "ratio" in m}
    values.update({f"{name}_compile_ratio": r["ratio"] for name, r in compile_ratios(results["cases"]).items()
                   if "ratio" in r})
    return "bench-optim: " + " ".join(f"{k}={v:.4f}" for k, v in values.items())

# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny parameter sets and 3 rounds: a smoke run")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--rounds", type=int, default=None, help="default 20 (quick: 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per contender per round; default 3 on "
                        "a CPU, 20 on CUDA (quick: 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile-probe", dest="compile_probe", action="store_false",
                        help="leave out the cold-compile measurement")
    parser.add_argument("--compile-timeout", type=float, default=600.0, help="seconds per cold compile")
    parser.add_argument("--case-timeout", type=float, default=1200.0, help="seconds per case's steady state")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/bench_optim.json"))
    parser.add_argument("--doc", "--readme", dest="doc", type=Path, default=None,
                        help="rewrite this Markdown file's bench-optim block (make bench-optim: docs/benchmarks.md)")
    parser.add_argument("--worker", choices=["compile", "steady"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs="+", choices=list(MEASUREMENTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.doc is not None and (args.quick or args.cases != list(CASES)):
        parser.error("--doc takes a full-size run of every case: drop --quick/--cases, or drop --doc")
    if args.doc is not None and not args.doc.is_file():
        parser.error(f"--doc {args.doc}: no such file")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    on_cuda = args.device.startswith("cuda")
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.steps = args.steps or (2 if args.quick else 20 if on_cuda else 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    results = {"mode": "quick (tiny sizes: a smoke run, not a measurement)" if args.quick else "full size",
               "quick": args.quick, "command": " ".join(["python", "scripts/bench_optim.py", *sys.argv[1:]]),
               "rounds": args.rounds, "steps": args.steps,
               "context": bench_context(args.device), "cases": {}}
    print(f"bench-optim, {results['mode']}: {describe(results['context'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-optim-caches-") as cache_root:
        for name in args.cases:
            print(f"  {name} ...", flush=True)
            results["cases"][name] = measure_case(args, name, cache_root)
    results["context"]["load_end"] = load_average()
    publish(results, BLOCK, render_block(results), args.json, args.doc)
    print(summary_line(results))


if __name__ == "__main__":
    main()
