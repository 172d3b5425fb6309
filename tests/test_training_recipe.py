"""The recipe options (``trainer.grad_accum_steps``, ``trainer.grad_clip_norm``, ``trainer.label_smoothing``):
what each does to a step, held against the arithmetic it claims, and that each resumes exactly."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from torch import nn

from dualadam.optim import DualAdam
from dualadam.tasks import build_task, validate_config
from dualadam.train import train
from dualadam.training import metrics as M
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.optimizers import inverse_adam_rate
from dualadam.training.outputs import config_hash, read_metrics
from dualadam.training.recipe import Recipe
from dualadam.training.run_directory import CHECKPOINT_FILE
from dualadam.training.runtime import Runtime
from dualadam.training.trainer import Trainer
from dualadam.training.validation import ConfigError
from tests.conftest import compose_train_config
from tests.runs import assert_same_run, one_thread  # noqa: F401  (one_thread: a fixture)
from tests.test_resume import RESUME_OVERRIDES, signal_self_after_step

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = Runtime(device=torch.device("cpu"), precision="32", channels_last=False, compile=False)


class FixedBatches:
    """A training loader that yields the same list of ``(inputs, labels)`` batches every epoch."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LinearTask:
    """A linear classifier (no batch-dependent layer) on fixed batches: the task contract at its smallest."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.model = model
        self.train_loader = FixedBatches(batches)
        self.eval_loaders = {}

    def training_step(self, model, batch):
        inputs, labels = batch
        logits = model(inputs)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum(), labels.shape[0]


def linear_model(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(5, 3).to(dtype)


def random_batches(count: int, size: int, dtype=torch.float64, scale: float = 1.0) -> list:
    generator = torch.Generator().manual_seed(1)
    return [(scale * torch.randn(size, 5, generator=generator, dtype=torch.float64).to(dtype),
             torch.randint(0, 3, (size,), generator=generator)) for _ in range(count)]


def trained(batches: list, epochs: int, recipe: Recipe, optimizer_class=DualAdam, runtime: Runtime = CPU,
            dtype=torch.float64, **optimizer_kwargs) -> Trainer:
    """A trainer over ``batches`` after ``epochs`` training passes (no evaluation)."""
    task = LinearTask(linear_model(dtype), batches)
    optimizer = optimizer_class(task.model.parameters(), lr=0.05, **optimizer_kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))  # step-dependent
    trainer = Trainer(task, optimizer, scheduler, runtime, epochs=epochs, monitor="test/acc", progress=False,
                      recipe=recipe)
    for epoch in range(epochs):
        trainer.train_one_epoch(epoch)
    return trainer


def concatenated_windows(batches: list, k: int) -> list:
    """Each accumulation window of ``batches`` as one batch."""
    return [(torch.cat([x for x, _ in batches[i:i + k]]), torch.cat([y for _, y in batches[i:i + k]]))
            for i in range(0, len(batches), k)]


@pytest.mark.parametrize(("micro_batches", "k"), [(4, 2), (6, 3), (5, 2), (7, 3)])
def test_accumulating_k_micro_batches_takes_the_step_of_their_concatenated_batch(micro_batches, k):
    """Also when an epoch's batches are not a multiple of k (5, 7): its last, shorter window steps with the
    micro-batches it has. The step count, and with it the schedule and DualAdam's alpha, advance per window."""
    batches = random_batches(micro_batches, size=4)
    accumulated = trained(batches, epochs=2, recipe=Recipe(grad_accum_steps=k), switch_rate=0.05)
    whole = trained(concatenated_windows(batches, k), epochs=2, recipe=Recipe(), switch_rate=0.05)
    steps = 2 * math.ceil(micro_batches / k)
    assert accumulated.scheduler.last_epoch == whole.scheduler.last_epoch == steps
    assert inverse_adam_rate(accumulated.optimizer) == inverse_adam_rate(whole.optimizer) == \
        pytest.approx(1 - 0.05 * steps)   # alpha of step number `steps`
    for ours, theirs in zip(accumulated.task.model.parameters(), whole.task.model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)   # float64: the sums' order differs


def manual_clipped_sgd(batches: list, max_norm: float, lr: float) -> tuple[nn.Module, list[float]]:
    """SGD with the clip written out: g * min(1, max_norm / (||g|| + 1e-6)), ||g|| over all parameters."""
    model, norms = linear_model(), []
    for inputs, labels in batches:
        model.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        norms.append(float(norm))
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad * min(1.0, max_norm / (float(norm) + 1e-6))
    return model, norms


@pytest.mark.parametrize("max_norm", [0.05, 1e6])   # binding, and too large to bind
def test_clipping_bounds_the_global_gradient_norm_like_a_manual_clip(max_norm):
    batches = random_batches(3, size=8, scale=5.0)
    task = LinearTask(linear_model(), batches)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = Trainer(task, optimizer, scheduler, CPU, epochs=1, monitor="test/acc", progress=False,
                      recipe=Recipe(grad_clip_norm=max_norm))
    measured = trainer.train_one_epoch(0)
    reference, norms = manual_clipped_sgd(batches, max_norm, lr=0.1)
    for ours, theirs in zip(task.model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    last_step_norm = torch.cat([p.grad.flatten() for p in task.model.parameters()]).norm()   # as applied
    assert last_step_norm <= max_norm * (1 + 1e-9)
    assert measured.grad_norm == pytest.approx(sum(norms) / len(norms), rel=1e-12)  # before clipping
    if max_norm < min(norms):
        assert last_step_norm == pytest.approx(max_norm, rel=1e-6)


def test_clipping_under_fp16_loss_scaling_clips_the_true_gradient_norm():
    """fp16's GradScaler multiplies the loss by 2**16: the clip must see the gradients with the scale taken
    out, so the recorded norm is the float32 run's, not 65536 times it."""
    fp16 = Runtime(device=torch.device("cpu"), precision="fp16", channels_last=False, compile=False)
    batches = random_batches(2, size=8, dtype=torch.float32)
    scaled = trained(batches, 1, Recipe(grad_clip_norm=0.05), torch.optim.SGD, fp16, torch.float32)
    plain = trained(batches, 1, Recipe(grad_clip_norm=0.05), torch.optim.SGD, CPU, torch.float32)
    assert scaled.scaler is not None and scaled.scaler.get_scale() > 1
    assert scaled.grad_norms.mean() == pytest.approx(plain.grad_norms.mean(), rel=1e-2)


def test_label_smoothing_changes_the_training_loss_as_torch_defines_it_and_leaves_evaluation_plain():
    cfg = compose_train_config(["trainer.label_smoothing=0.2"])
    task = build_task(cfg, CPU)
    images, labels = next(iter(task.train_loader))
    with torch.no_grad():
        smoothed, _, _ = task.training_step(task.model, (images, labels))
        log_probs = task.model(images).log_softmax(dim=1)
    plain = F.nll_loss(log_probs, labels)
    uniform = -log_probs.mean(dim=1).mean()   # cross-entropy against the uniform distribution over classes
    torch.testing.assert_close(smoothed, 0.8 * plain + 0.2 * uniform)
    assert not torch.isclose(smoothed, plain)
    task.model.eval()
    with torch.no_grad():
        evaluated = task.evaluate(task.model, [(images, labels)])["loss"]
        assert evaluated == pytest.approx(float(F.cross_entropy(task.model(images), labels)), rel=1e-6)


@pytest.mark.parametrize(("override", "key"), [
    ("trainer.grad_clip_norm=-1.0", "trainer.grad_clip_norm"),
    ("trainer.grad_clip_norm=0", "trainer.grad_clip_norm"),
    ("trainer.grad_accum_steps=0", "trainer.grad_accum_steps"),
    ("trainer.grad_accum_steps=1.5", "trainer.grad_accum_steps"),
    ("trainer.label_smoothing=1.0", "trainer.label_smoothing"),
    ("trainer.label_smoothing=-0.1", "trainer.label_smoothing"),
])
def test_an_invalid_recipe_value_is_rejected_naming_its_key_and_the_fix(override, key):
    with pytest.raises(ConfigError, match=rf"{key}=.* is invalid: expected .* Fix it with an override"):
        validate_config(compose_train_config([override]))


def test_label_smoothing_is_refused_for_llm_finetuning_naming_the_task():
    cfg = compose_train_config(["debug=llm_smoke", "trainer.label_smoothing=0.1"], fast=False)
    with pytest.raises(ConfigError, match="trainer.label_smoothing=0.1 is invalid: .*task=llm_finetune"):
        validate_config(cfg)


@pytest.mark.parametrize(("key", "value"), [("grad_clip_norm", 1.0), ("grad_accum_steps", 2),
                                            ("label_smoothing", 0.1)])
def test_a_recipe_key_at_its_default_keeps_the_identity_of_runs_made_before_it(key, value):
    cfg = compose_train_config()
    before_the_key = compose_train_config()
    with open_dict(before_the_key):
        del before_the_key.trainer[key]
    assert config_hash(before_the_key) == config_hash(cfg)
    with open_dict(cfg):
        cfg.trainer[key] = value
    assert config_hash(cfg) != config_hash(before_the_key)   # set otherwise, it is another experiment


def test_a_run_records_its_effective_batch_steps_per_window_and_pre_clip_norms(make_cfg):
    # 256 images in batches of 32: 8 micro-batches per epoch, in windows of 3: 3 optimizer steps per epoch.
    cfg = make_cfg("trainer.epochs=2", "trainer.grad_accum_steps=3", "trainer.grad_clip_norm=1.0")

    summary = train(cfg)
    assert summary["status"] == "completed"
    assert summary["effective_batch_size"] == 96
    rows = read_metrics(cfg.run_dir)
    assert [row[M.OPTIMIZER_STEPS] for row in rows] == [3, 6]
    assert all(math.isfinite(row[M.GRAD_NORM]) and row[M.GRAD_NORM] > 0 for row in rows)
    assert M.GRAD_NORM not in read_metrics(Path(train(make_cfg())["run_dir"]))[0]   # only when clipping


# Exact resume, per option: the tiny ResNet of tests/test_resume.py (batch norm, stochastic depth), 4 batches
# per epoch, 3 epochs; stopped by SIGTERM mid-epoch and rerun, it must end bitwise as the uninterrupted run.
RESUME_WITH = {
    "clipping": ("trainer.grad_clip_norm=0.5",),           # binding on this model; rows carry train/grad_norm
    "label smoothing": ("trainer.label_smoothing=0.1",),
    "accumulation": ("trainer.grad_accum_steps=3",),       # windows of 3 + 1: a partial window ends each epoch
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_thread):  # noqa: F811  (a fixture)
    """``uninterrupted(option)``: the run directory of the option's uninterrupted run (made once)."""
    made: dict[str, Path] = {}

    def run(option: str) -> Path:
        if option not in made:
            cfg = compose_train_config([*RESUME_OVERRIDES, *RESUME_WITH[option]], fast=False)
            with open_dict(cfg):
                cfg.run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
            assert train(cfg)["status"] == "completed"
            made[option] = Path(cfg.run_dir)
        return made[option]

    return run


def signal_self_after_micro_batch(monkeypatch, number: int) -> None:
    """SIGTERM to this process right after the run's ``number``-th micro-batch (1-based) was trained."""
    original, trained_so_far = Trainer.train_micro_batch, [0]

    def train_then_signal(self, batch, window):
        result = original(self, batch, window)
        trained_so_far[0] += 1
        if trained_so_far[0] == number:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "train_micro_batch", train_then_signal)


@pytest.mark.parametrize("option", ["clipping", "label smoothing"])
def test_a_run_with_the_option_preempted_mid_epoch_resumes_exactly(option, make_cfg, uninterrupted, monkeypatch):
    cfg = make_cfg(*RESUME_OVERRIDES, *RESUME_WITH[option], fast=False)
    signal_self_after_step(monkeypatch, 6)   # the 2nd of epoch 2's 4 steps
    assert train(cfg)["status"] == "preempted"
    monkeypatch.undo()
    assert train(cfg)["status"] == "completed"
    assert_same_run(cfg.run_dir, uninterrupted(option))


def test_a_signal_mid_accumulation_window_finishes_the_window_checkpoints_and_resumes_exactly(
        make_cfg, uninterrupted, monkeypatch):
    cfg = make_cfg(*RESUME_OVERRIDES, *RESUME_WITH["accumulation"], fast=False)
    signal_self_after_micro_batch(monkeypatch, 5)   # epoch 2's 1st micro-batch: its window holds 3
    stopped = train(cfg)
    monkeypatch.undo()
    assert stopped["status"] == "preempted" and stopped["preempted"]["step"] == 3   # after the window's step
    saved = load_checkpoint(Path(cfg.run_dir) / CHECKPOINT_FILE)
    assert saved["train_state"]["in_epoch"]["batches"] == 3 and saved["scheduler"]["last_epoch"] == 3
    assert train(cfg)["status"] == "completed"
    reference = uninterrupted("accumulation")
    assert [row[M.OPTIMIZER_STEPS] for row in read_metrics(reference)] == [2, 4, 6]
    assert_same_run(cfg.run_dir, reference)
