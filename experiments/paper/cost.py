"""What each paper-table study costs in A100 GPU-hours, from measured FLOPs and stated assumptions.

    python experiments/paper/cost.py                                    # print the table
    python experiments/paper/cost.py --readme experiments/paper/README.md   # also rewrite its cost block

For every ``configs/experiment/paper_*.yaml`` and ``fair_*.yaml``: the model the config builds is run once,
forward and backward, on CPU under ``torch.utils.flop_counter`` (matmul and convolution FLOPs; elementwise
ops are not counted), giving the training and evaluation FLOPs per image. The number of runs is the config's
sweep, or for a tuned study (a ``compare`` block: ``python -m dualadam.compare``) optimizers x (K trials + N
confirmation seeds); its epochs, dataset and validation split give the images. The hours follow from the
assumptions below.

The tuned LLM study (``llm_qwen_gsm8k_tuned``) is estimated from its model's parameter count instead (its
weights are on the Hugging Face Hub, not here): LoRA training at 4 FLOPs per parameter and token, and
generation, which dominates, at one decode step per new token and evaluation batch (``llm_study_cost``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from torch.utils.flop_counter import FlopCounterMode

from dualadam.reporting.readme_blocks import rewrite_block
from dualadam.tasks.image.data.info import DatasetInfo, normalization_for
from dualadam.tasks.image.models import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"

# Dataset facts: (training images, test images, classes, image side in pixels).
DATASETS = {
    "cifar10": (50_000, 10_000, 10, 32),
    "cifar100": (50_000, 10_000, 100, 32),
    "tiny_imagenet": (100_000, 10_000, 200, 64),
    "imagenet": (1_281_167, 50_000, 1000, 224),
}
# Assumptions (README: "What it costs"). A100 dense fp16 tensor-core peak, and the fraction of it a batch-128
# eager PyTorch loop reaches on these small models: kernels are small, so launch overhead and memory traffic,
# not tensor-core math, dominate.
A100_PEAK_FLOPS = 312e12
UTILIZATION = 0.15
# ImageNet's JPEG decode and RandomResizedCrop run on the host: about 3,000 images/s with 16 loader workers.
# The CIFAR and Tiny-ImageNet sets fit on the GPU (the device-resident loader), so only ImageNet is data-bound.
HOST_IMAGES_PER_S = {"imagenet": 3_000.0}

# LLM studies. Parameters from the model card (the weights are not downloaded here); GSM8K's problem counts.
LLM_STUDIES = ("llm_qwen_gsm8k_tuned",)
LLM_PARAMS = {"Qwen/Qwen2.5-1.5B-Instruct": 1.54e9}
LLM_DATASETS = {"gsm8k": (7_473, 1_319)}   # training problems, test problems
# Assumed averages for GSM8K in the chat template: a prompt (question and template) and a worked answer.
PROMPT_TOKENS, ANSWER_TOKENS = 120, 130
# LoRA: forward 2N and backward through the frozen weights 2N FLOPs per token; the adapters' own gradients
# are negligible.
LORA_FLOPS_PER_PARAM_TOKEN = 4
# A decode step of eager Hugging Face generate on a ~30-layer model is bound by kernel launches and Python,
# not by reading the weights (3 GB in bf16: 1.5 ms at 2 TB/s): ~25 ms, whatever the batch.
DECODE_STEP_S = 0.025


@dataclass(frozen=True)
class StudyCost:
    study: str
    dataset: str
    model: str
    params_m: float
    train_gflops: float     # per training image, forward + backward
    runs: int
    epochs: int
    compute_hours: float    # per run
    data_hours: float       # per run: the host loader's floor

    @property
    def hours_per_run(self) -> float:
        return max(self.compute_hours, self.data_hours)

    @property
    def total_hours(self) -> float:
        return self.hours_per_run * self.runs


def flops_per_image(model: torch.nn.Module, image_size: int, train: bool) -> float:
    """Matmul and convolution FLOPs for one image: forward, plus backward when ``train``."""
    batch = torch.randn(2, 3, image_size, image_size)
    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            model(batch).sum().backward()
        else:
            with torch.no_grad():
                model(batch)
    return counter.get_total_flops() / batch.shape[0]


def sweep_size(params) -> int:
    """How many jobs Hydra's basic sweeper launches for ``hydra.sweeper.params``."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in overrides)


def run_count(cfg) -> int:
    """The runs a study launches: a tuned study's K trials and N confirmation seeds per optimizer (every run
    the same length), otherwise its Hydra sweep."""
    if "compare" in cfg:
        return len(cfg.compare.optimizers) * (cfg.compare.trials + len(cfg.compare.confirm_seeds))
    return sweep_size(cfg.hydra.sweeper.params)


def study_cost(study: str) -> StudyCost:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={study}"], return_hydra_config=True)
    train_images, test_images, classes, size = DATASETS[cfg.dataset.name]
    norm = normalization_for(cfg.dataset.name, "dataset")
    torch.manual_seed(0)
    model = build_model(cfg.model, DatasetInfo(cfg.dataset.name, classes, size, 3, norm.mean, norm.std))
    train_flops, eval_flops = flops_per_image(model, size, True), flops_per_image(model, size, False)
    epochs = int(cfg.trainer.epochs)
    # A validation split is held out of the training images and evaluated each epoch, as are the test set and
    # a train-eval subset as large as it.
    val_images = int(cfg.dataset.get("val_size") or 0)
    trained, evaluated = train_images - val_images, 2 * test_images + val_images
    flops = epochs * (trained * train_flops + evaluated * eval_flops)
    host_rate = HOST_IMAGES_PER_S.get(cfg.dataset.name, math.inf)
    return StudyCost(study, cfg.dataset.name, cfg.model.name, sum(p.numel() for p in model.parameters()) / 1e6,
                     train_flops / 1e9, run_count(cfg), epochs,
                     flops / (A100_PEAK_FLOPS * UTILIZATION) / 3600,
                     epochs * (trained + evaluated) / host_rate / 3600)


def _llm_run_hours(cfg, params: float) -> float:
    """One run of an LLM study: LoRA training at ``UTILIZATION`` of the peak, plus generation for every
    evaluation (before training when asked, then after each epoch) of the val, train-eval and test prompts,
    each evaluation batch decoding ``max_new_tokens`` steps (the longest answer in a batch sets its length)."""
    train_problems, test_problems = LLM_DATASETS[cfg.dataset.name]
    d = cfg.dataset
    val_problems = round(train_problems * float(d.get("val_fraction") or 0))
    trained = train_problems - val_problems
    epochs = int(cfg.trainer.epochs)
    train_flops = epochs * trained * (PROMPT_TOKENS + ANSWER_TOKENS) * LORA_FLOPS_PER_PARAM_TOKEN * params
    prompts = [min(int(d.get("val_size") or val_problems), val_problems), int(d.train_eval_size),
               int(d.test_size) if d.get("test_size") is not None else test_problems]
    evaluations = epochs + int(bool(cfg.trainer.get("eval_before_training")))
    batches = sum(math.ceil(n / int(cfg.trainer.eval_batch_size)) for n in prompts if n > 0)
    prefill_flops = 2 * params * PROMPT_TOKENS * sum(prompts)
    compute_s = (train_flops + evaluations * prefill_flops) / (A100_PEAK_FLOPS * UTILIZATION)
    return (compute_s + evaluations * batches * int(d.max_new_tokens) * DECODE_STEP_S) / 3600


def llm_study_cost(study: str) -> StudyCost:
    """A tuned LLM study: its tuning runs (with the protocol's tuning overrides) and confirmation runs."""
    overrides = [f"experiment={study}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
        tune_cfg = compose(config_name="train", overrides=[*overrides, *cfg.compare.tune_overrides])
    params = LLM_PARAMS[cfg.model.name]
    optimizers = len(cfg.compare.optimizers)
    tuning, confirming = optimizers * cfg.compare.trials, optimizers * len(cfg.compare.confirm_seeds)
    total = tuning * _llm_run_hours(tune_cfg, params) + confirming * _llm_run_hours(cfg, params)
    runs = tuning + confirming
    train_gflops = LORA_FLOPS_PER_PARAM_TOKEN * params * (PROMPT_TOKENS + ANSWER_TOKENS) / 1e9
    # hours per run: the mean over tuning and confirmation runs, so runs x per run is the study's total.
    return StudyCost(study, cfg.dataset.name, cfg.model.name.split("/")[-1], params / 1e6, train_gflops, runs,
                     int(cfg.trainer.epochs), total / runs, 0.0)


def hours(value: float) -> str:
    """Two significant figures below 10, whole hours above: the estimate is no finer."""
    return f"{value:.2g}" if value < 10 else f"{value:,.0f}"


def cost_table(costs: list[StudyCost]) -> str:
    lines = ["| study | dataset / model | params (M) | train GFLOPs / sample | runs | A100-h per run | "
             "A100-h, whole study |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in costs:
        bound = " (data-bound)" if c.data_hours > c.compute_hours else ""
        lines.append(f"| `{c.study}` | {c.dataset} / {c.model} | {c.params_m:.1f} | {c.train_gflops:.2f} | "
                     f"{c.runs} | {hours(c.hours_per_run)}{bound} | {hours(c.total_hours)} |")
    total = sum(c.total_hours for c in costs)
    assumptions = (f"_Generated by `make paper-cost` (`experiments/paper/cost.py`). Assumptions: A100 at "
                   f"{UTILIZATION:.0%} of its {A100_PEAK_FLOPS / 1e12:.0f} TFLOP/s fp16 peak; ImageNet loading at "
                   f"{HOST_IMAGES_PER_S['imagenet']:,.0f} images/s. The `fair_*` studies are tuned comparisons: "
                   "runs = optimizers x (K tuning trials + N confirmation seeds), each a full-length run. A sample "
                   "is an image, or for the LLM study a training sequence (~"
                   f"{PROMPT_TOKENS + ANSWER_TOKENS} tokens; its hours per run are the mean over tuning and "
                   f"confirmation runs, with generation at {DECODE_STEP_S * 1000:.0f} ms a decode step). Every "
                   f"study together: {hours(total)} A100-hours. Estimates, not measurements: expect the real "
                   "figures within a factor of 2 to 3._")
    return "\n".join([assumptions, "", *lines]) + "\n"


def all_costs() -> list[StudyCost]:
    """Every paper and fair study (sorted), then the LLM studies."""
    studies = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
                     if p.stem.startswith(("paper_", "fair_")))
    return [*(study_cost(s) for s in studies), *(llm_study_cost(s) for s in LLM_STUDIES)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, help="a Markdown file whose paper-cost block to rewrite")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    table = cost_table(all_costs())
    print(table)
    if args.readme:
        rewrite_block(args.readme, "paper-cost", table)


if __name__ == "__main__":
    main()
