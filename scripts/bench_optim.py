"""Optimizer step time and memory: DualAdam against torch's Adam, on timm's ResNet-18 parameter list.

Protocol (single process, so machine load hits every contender alike): one thread; fixed gradients; each round
runs every implementation for a few steps in a freshly shuffled order; a ratio is taken between contenders of
the *same* round; the figure reported is the median of those paired ratios. Allocations are counted with
torch.profiler (bytes allocated during one step, and the largest single allocation).

    make bench-optim                       # or: python scripts/bench_optim.py --rounds 30

Phases: "blend" = DualAdam mid-blend (alpha ~ 1, switch_rate 8e-5); "adam" = after the hand-over (alpha = 0).
The last line is machine-readable: `bench-optim: <key>=<value> ...`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import timm
import torch

import dualadam  # noqa: F401  (registers with timm)
from dualadam import DualAdam
from dualadam.optim.profiling import measure_step

TARGETS = {  # (numerator, denominator, phase) -> max ratio, from the optimizer issue
    ("dualadam_fused", "adam_fused", "blend"): 1.15,
    ("dualadam_fused", "adam_fused", "adam"): 1.05,
    ("dualadam_foreach", "adam_foreach", "blend"): 1.25,
}

CONTENDERS: dict[str, Callable] = {
    "adam_foreach": lambda ps, xi: torch.optim.Adam(ps, lr=1e-4, foreach=True),
    "adam_fused": lambda ps, xi: torch.optim.Adam(ps, lr=1e-4, fused=True),
    "dualadam_foreach": lambda ps, xi: DualAdam(ps, lr=1e-4, switch_rate=xi, foreach=True),
    "dualadam_fused": lambda ps, xi: DualAdam(ps, lr=1e-4, switch_rate=xi, fused=True),
    "dualadam_reference": lambda ps, xi: DualAdam(ps, lr=1e-4, switch_rate=xi, foreach=False),
}
SWITCH_RATE = {"blend": 8e-5, "adam": 1.0}  # switch_rate 1 hands over to Adam at the very first step


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """timm resnet18's parameters (11.7 M, 62 tensors), each with a fixed small gradient."""
    torch.manual_seed(seed)
    params = [p.detach().clone().requires_grad_() for p in timm.create_model("resnet18").parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def allocations_per_step(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes allocated, most bytes allocated by one op call) during one step."""
    cost = measure_step(opt.step)
    return cost.bytes_allocated, cost.max_bytes_one_op


def bench_phase(phase: str, names: list[str], rounds: int, steps: int) -> dict:
    opts = {name: CONTENDERS[name](make_params(), SWITCH_RATE[phase]) for name in names}
    for opt in opts.values():  # warm-up: state allocation, torch.compile of the fused blend step
        time_steps(opt, 2)
    per_round = []
    for _ in range(rounds):
        order = random.sample(names, len(names))
        per_round.append({name: time_steps(opts[name], steps) for name in order})
    memory = {name: allocations_per_step(opt) for name, opt in opts.items()}
    alpha = {name: opt.param_groups[0].get("inverse_adam_rate") for name, opt in opts.items()}
    return {"times": per_round, "memory": memory, "alpha": alpha}


def median_ratio(per_round: list[dict], num: str, den: str) -> float:
    return statistics.median(r[num] / r[den] for r in per_round)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="steps per contender per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-reference", action="store_true", help="leave out the slow per-tensor path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    names = [n for n in CONTENDERS if not (args.skip_reference and n == "dualadam_reference")]
    param_bytes = sum(p.numel() * p.element_size() for p in make_params())
    print(f"torch {torch.__version__}, {args.threads} thread(s), timm resnet18: {param_bytes / 2**20:.1f} MiB "
          f"of fp32 params; {args.rounds} rounds x {args.steps} steps, median of paired ratios\n")

    summary = {}
    for phase in ("blend", "adam"):
        result = bench_phase(phase, names, args.rounds, args.steps)
        print(f"phase={phase}  (DualAdam alpha after warm-up: {result['alpha']['dualadam_foreach']:.4f})")
        print(f"  {'implementation':<20}{'ms/step':>9}{'/adam_foreach':>15}{'/adam_fused':>13}"
              f"{'alloc MiB/step':>16}{'max MiB/op':>12}")
        for name in names:
            ms = 1e3 * statistics.median(r[name] for r in result["times"])
            total, largest = result["memory"][name]
            print(f"  {name:<20}{ms:9.2f}{median_ratio(result['times'], name, 'adam_foreach'):15.3f}"
                  f"{median_ratio(result['times'], name, 'adam_fused'):13.3f}"
                  f"{total / 2**20:16.2f}{largest / 2**20:12.2f}")
        for (num, den, target_phase), limit in TARGETS.items():
            if target_phase == phase:
                ratio = median_ratio(result["times"], num, den)
                summary[f"{num}_vs_{den}_{phase}"] = ratio
                verdict = "ok" if ratio <= limit else "ABOVE TARGET"
                print(f"  target {num}/{den} <= {limit}: {ratio:.3f}  {verdict}")
        fused_alloc = result["memory"]["dualadam_fused"][0]
        summary[f"dualadam_fused_alloc_fraction_{phase}"] = fused_alloc / param_bytes
        print(f"  dualadam_fused allocates {fused_alloc / param_bytes:.2%} of the param bytes per step "
              f"(target: no model-sized temporary)\n")
    print("bench-optim: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
