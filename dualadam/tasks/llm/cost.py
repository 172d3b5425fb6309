"""What LLM fine-tuning costs on this machine: ``python -m dualadam.tasks.llm.cost [--steps N] [--batch-size B] ...``

Loads SmolLM2-135M-Instruct (or ``--model tiny``), wraps it in LoRA, and times, with the task's own code: one
evaluation pass of the base model, ``--steps`` DualAdam steps, then the evaluation pass again. Prints seconds
per step (median and min: on a shared machine the median absorbs other jobs' load) and per evaluated prompt,
with the accuracies and losses measured along the way, so a study can be sized before it is launched.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from dualadam import DualAdam
from dualadam.tasks.llm.finetuning import parameter_counts, trainable_parameters
from dualadam.tasks.llm.task import LLMFineTuning
from dualadam.training.runtime import Runtime

MODELS = {
    "smollm2": {"name": "SmolLM2-135M-Instruct", "source": "smollm2_gguf", "dtype": "float32"},
    "tiny": {"name": "tiny-random-llama", "source": "tiny_random", "dtype": "float32"},
}


def cost_config(args: argparse.Namespace):
    return OmegaConf.create({
        "seed": 0,
        "model": MODELS[args.model],
        "finetune": {"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05,
                                                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "dataset": {"name": "arithmetic", "train_size": args.steps * args.batch_size, "test_size": args.eval_prompts,
                    "train_eval_size": 1, "test_fraction": 0.2, "data_seed": 0, "max_length": 256,
                    "max_new_tokens": args.max_new_tokens, "system_prompt": "Solve the math word problem."},
        "trainer": {"batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size},
    })


def timed_evaluation(task: LLMFineTuning) -> tuple[float, dict[str, float]]:
    task.model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        result = task.evaluate(task.model, task.eval_loaders["test"])
    return time.perf_counter() - start, result


def timed_steps(task: LLMFineTuning, optimizer: torch.optim.Optimizer) -> list[float]:
    task.model.train()
    task.train_loader.set_epoch(0)
    seconds = []
    for batch in task.train_loader:
        start = time.perf_counter()
        loss, _, _ = task.training_step(task.model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def report_evaluation(label: str, seconds: float, result: dict[str, float], prompts: int) -> None:
    print(f"{label}: {seconds:.1f} s for {prompts} prompts ({seconds / prompts:.2f} s/prompt); "
          f"exact match {result['acc']:.1f}%, loss {result['loss']:.3f} nats/token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.perf_counter()
    runtime = Runtime(device=torch.device("cpu"), precision="32", channels_last=False, compile=False)
    task = LLMFineTuning(cost_config(args), runtime)
    trainable, total = parameter_counts(task.model)
    sequences = task.train_loader.encoded
    tokens = sum(len(e.input_ids) for e in sequences) / len(sequences)
    print(f"{args.model}: loaded and wrapped in {time.perf_counter() - start:.1f} s; LoRA trains {trainable:,} of "
          f"{total:,} parameters; {tokens:.0f} tokens per training sequence; torch threads {torch.get_num_threads()}")
    report_evaluation("evaluation pass, base model", *timed_evaluation(task), args.eval_prompts)
    optimizer = DualAdam(trainable_parameters(task.model), lr=args.lr, switch_rate=1.0 / (3 * args.steps))
    seconds = timed_steps(task, optimizer)
    print(f"LoRA step, DualAdam, batch {args.batch_size}: median {statistics.median(seconds):.2f} s, "
          f"min {min(seconds):.2f} s over {len(seconds)} steps")
    report_evaluation(f"evaluation pass after {len(seconds)} steps", *timed_evaluation(task), args.eval_prompts)


if __name__ == "__main__":
    main()
