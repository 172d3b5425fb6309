"""The lean training step: no host sync in the step loop, batches handed over ready, the fused optimizer switch,
and the in-memory and DataLoader paths training alike."""

from __future__ import annotations

import collections
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dualadam.tasks import TASKS, validate_config
from dualadam.tasks.image.data.device_loaders import DeviceEpochLoader
from dualadam.train import train
from dualadam.training import metrics as M
from dualadam.training.optimizers import build_optimizer, fused_kwargs
from dualadam.training.run import build_trainer
from dualadam.training.runtime import resolve_runtime, seed_everything
from dualadam.training.validation import ConfigError

# What makes the host wait for the device: reading values (item, tolist, float(t), bool(t), .cpu(), .numpy())
# and ops whose output size depends on the data (nonzero, masked_select, unique), called from Python ...
HOST_READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
                        "nonzero", "masked_select", "unique"})
# ... or from inside other ops (seen by the profiler).
HOST_SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2"})


class HostReads(TorchFunctionMode):
    """Counts the host-reading tensor calls made while it is active."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


# 8x8 images keep a CPU epoch (even in fp16, which CPUs run slowly) well under a second.
TINY = ("dataset.image_size=8", "dataset.crop_padding=2", "dataset.test_size=32", "trainer.batch_size=8")


def trainer_for(make_cfg, *overrides):
    cfg = make_cfg(*TINY, *overrides)
    seed_everything(cfg.seed)
    return build_trainer(cfg, resolve_runtime(cfg.trainer), TASKS[cfg.task], sinks=[])


def host_syncs_in_an_epoch(trainer) -> collections.Counter:
    """Host reads during one training epoch (the second: the first allocates optimizer state)."""
    trainer.train_one_epoch(0)
    with HostReads() as reads, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        trainer.train_one_epoch(1)
    return reads.counts + collections.Counter(e.name for e in profile.events() if e.name in HOST_SYNC_OPS)


def test_the_step_loop_never_waits_for_the_device(make_cfg):
    """Structural, so it holds on the CPU too: the default loop's host reads do not grow with the steps.
    What remains is per epoch: the read of the epoch's loss/accuracy totals and the divergence guard's
    end-of-epoch poll (the guard also polls every ``check_every`` = 50 steps; these epochs are shorter)."""
    short = trainer_for(make_cfg, "dataset.train_size=32")  # 4 steps of 8
    long = trainer_for(make_cfg, "dataset.train_size=96")  # 12 steps
    assert isinstance(long.task.train_loader, DeviceEpochLoader)
    reads = host_syncs_in_an_epoch(long)
    assert host_syncs_in_an_epoch(short) == reads and sum(reads.values()) <= 2, reads
    # The detector works: fp16's GradScaler reads its inf check back every step (2 vs 6 steps of 2 images:
    # CPUs run fp16 convolutions slowly).
    fp16 = [trainer_for(make_cfg, f"dataset.train_size={n}", "trainer.precision=fp16", "trainer.batch_size=2",
                        "dataset.test_size=4") for n in (4, 12)]
    grown = host_syncs_in_an_epoch(fp16[1]) - host_syncs_in_an_epoch(fp16[0])
    assert grown["item"] >= 4, grown


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_step_loop_never_syncs_on_cuda(make_cfg):
    def syncs(train_size: int) -> int:
        trainer = trainer_for(make_cfg, f"dataset.train_size={train_size}", "trainer.device=cuda")
        trainer.train_one_epoch(0)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_one_epoch(1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    assert syncs(32) == syncs(96) <= 2  # the epoch's totals and the guard's end-of-epoch poll


def test_batches_arrive_on_the_device_in_the_compute_dtype_and_layout(make_cfg):
    trainer = trainer_for(make_cfg, "trainer.precision=bf16", "trainer.channels_last=true", "dataset.train_size=64")
    task = trainer.task
    for loader in (task.train_loader, *task.eval_loaders.values()):
        images, _ = next(iter(loader))
        assert images.dtype == torch.bfloat16 and images.is_contiguous(memory_format=torch.channels_last)
    batch = next(iter(task.train_loader))
    assert task._to_device(batch)[0] is batch[0]  # nothing left to move or convert
    conv = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    trainer.train_one_epoch(0)


def test_memory_and_dataloader_paths_train_alike(make_cfg):
    """Without augmentation both loaders give the same batches in the same order, so two runs agree."""
    rows = []
    for loader in ("memory", "dataloader"):
        cfg = make_cfg(*TINY, f"dataset.loader={loader}", "dataset.augmentation=none", "trainer.epochs=2")
        rows.append(train(cfg)["final"])
    for key in (M.TRAIN_LOSS, M.TRAIN_EVAL_LOSS, M.TEST_LOSS):
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-4), key
    for key in (M.TRAIN_ACC, M.TEST_ACC):
        assert rows[0][key] == pytest.approx(rows[1][key], abs=1.0), key  # one flipped prediction at most


def test_fused_optimizer_auto_means_cuda_only_and_only_where_it_exists():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_kwargs("dualadam", "auto", cuda) == {"fused": True} == fused_kwargs("adamw", "auto", cuda)
    assert fused_kwargs("dualadam", "auto", cpu) == {} and fused_kwargs("radam", "auto", cuda) == {}
    assert fused_kwargs("dualadam", False, cuda) == {} and fused_kwargs("adam", True, cpu) == {"fused": True}
    with pytest.raises(ValueError, match="radam.*no fused implementation"):
        fused_kwargs("radam", True, cpu)


def test_fused_optimizer_setting_reaches_the_optimizer(make_cfg):
    default = trainer_for(make_cfg)
    assert not default.optimizer.param_groups[0]["fused"]  # CPU: off (DualAdam would compile first)
    fused_adam = trainer_for(make_cfg, "optimizer=adam", "trainer.fused_optimizer=true")
    assert fused_adam.optimizer.param_groups[0]["fused"] is True
    fused_adam.train_one_epoch(0)
    cfg = make_cfg("optimizer=radam", "trainer.fused_optimizer=true")
    with pytest.raises(ConfigError, match="trainer.fused_optimizer.*radam"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="trainer.fused_optimizer"):
        validate_config(make_cfg("trainer.fused_optimizer=sometimes"))


def test_optimizer_kwargs_fused_wins_over_the_trainer_setting(make_cfg):
    cfg = make_cfg("optimizer=adam", "+optimizer.kwargs.fused=false")
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(cfg.optimizer, model, fused=True).param_groups[0]["fused"] is False


@pytest.mark.slow
def test_dualadam_fused_trains_through_the_trainer(make_cfg):
    """DualAdam's fused path compiles its blend step first (tens of seconds on a CPU)."""
    cfg = make_cfg(*TINY, "trainer.fused_optimizer=true", "dataset.train_size=64")
    summary = train(cfg)
    assert summary["status"] == "completed"
    assert summary["final"][M.INVERSE_ADAM_RATE] == pytest.approx(1 - 8 * 8e-5)  # 64 / 8 steps
