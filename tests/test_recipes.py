"""docs/optimizer.md's "Use the optimizer in your own loop" recipes, each run for real on CPU with a tiny model: HF
``Trainer``, Lightning, ``ZeroRedundancyOptimizer`` on two gloo ranks, and timm's factory.

Each framework run is compared with a plain loop of DualAdam on the same full-batch data, so a recipe that
quietly used another optimizer, dropped a step or reset the blend would fail.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dualadam
from dualadam import DualAdam, InvAdam

STEPS = 6
HYPER = dict(lr=1e-2, switch_rate=0.25, weight_decay=0.01)  # alpha 0.75, 0.5, 0.25, then Adam from step 4


def data(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, dtype=dtype)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype) + 0.1


def tiny_model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)


def plain_loop(model: torch.nn.Module, **hyper_overrides) -> torch.nn.Module:
    """The reference: DualAdam in a hand-written loop on the full batch, mean squared error."""
    x, y = data(next(model.parameters()).dtype)
    opt = DualAdam(model.parameters(), **{**HYPER, **hyper_overrides})
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
    return model


def assert_same_parameters(model, reference, rtol=1e-5, atol=1e-7):
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=atol, msg=name)


def assert_dualadam_past_the_hand_over(opt: torch.optim.Optimizer):
    """The framework stepped our optimizer; the parameter comparison with the plain loop pins the step count."""
    assert isinstance(opt, DualAdam)
    assert opt.param_groups[0]["inverse_adam_rate"] == 0.0


# --- HF Trainer -------------------------------------------------------------------------------------------------

class RegressionForTrainer(torch.nn.Module):
    """What ``transformers.Trainer`` needs from a model: keyword inputs, a dict output with ``loss``."""

    def __init__(self):
        super().__init__()
        self.net = tiny_model()

    def forward(self, x, labels=None):
        prediction = self.net(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(prediction, labels), "logits": prediction}


def test_hf_trainer_trains_with_dualadam_from_optimizer_cls_and_kwargs(tmp_path):
    transformers = pytest.importorskip("transformers")
    x, y = data()
    model = RegressionForTrainer()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=len(x), lr_scheduler_type="constant",
        max_grad_norm=0.0, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=True)
    train_set = [{"x": xi, "labels": yi} for xi, yi in zip(x, y)]
    # Trainer's own groups: weight decay args.weight_decay (0 here) on all but biases and norms.
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train_set,
                                   optimizer_cls_and_kwargs=(DualAdam, {**HYPER, "weight_decay": 0.0}))
    trainer.train()

    assert_dualadam_past_the_hand_over(getattr(trainer.optimizer, "optimizer", trainer.optimizer))
    assert_same_parameters(model.net, plain_loop(tiny_model(), weight_decay=0.0))


# --- Lightning --------------------------------------------------------------------------------------------------

def test_lightning_configure_optimizers_returns_dualadam():
    lightning = pytest.importorskip("lightning")

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)

        def configure_optimizers(self):
            return DualAdam(self.parameters(), **HYPER)

    module = Regression()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=16)
    trainer = lightning.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)

    assert_dualadam_past_the_hand_over(trainer.optimizers[0])
    assert_same_parameters(module.net, plain_loop(tiny_model()))


# --- ZeroRedundancyOptimizer ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank: DDP on its half of the batch, optimizer state sharded by ZeroRedundancyOptimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = DistributedDataParallel(tiny_model(torch.float64))
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=DualAdam, **HYPER)
        x, y = (t.chunk(world_size)[rank] for t in data(torch.float64))
        for _ in range(STEPS):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
            opt.step()
        local_state = len(opt.optim.state)  # the parameters whose moments this rank holds
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save({"params": [p.detach() for p in model.module.parameters()], "local_state": local_state,
                        "state_dict": opt.state_dict(), "group": opt.optim.param_groups[0]}, out)
    finally:
        dist.destroy_process_group()


def test_zero_redundancy_optimizer_on_two_gloo_ranks_equals_unsharded_dualadam(tmp_path):
    out = tmp_path / "rank0.pt"
    # forkserver: torch is imported once, in the server, and both ranks fork from it (a plain fork of this
    # process is refused by autograd once it has run a backward pass; spawn imports torch twice).
    mp.set_forkserver_preload(["torch", __name__])
    mp.start_processes(zero_worker, args=(2, free_port(), str(out)), nprocs=2, join=True,
                       start_method="forkserver")
    result = torch.load(out)

    reference = plain_loop(tiny_model(torch.float64))
    for got, want in zip(result["params"], reference.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    n_params = len(list(reference.parameters()))
    assert 0 < result["local_state"] < n_params, "each rank holds only its shard of the moments"
    assert len(result["state_dict"]["state"]) == n_params, "consolidate_state_dict gathers every shard"
    assert result["group"]["inverse_adam_rate"] == 0.0


# --- timm --------------------------------------------------------------------------------------------------------

def test_timm_factory_builds_dualadam_after_the_one_liner_with_timms_param_group_policy():
    timm = pytest.importorskip("timm")
    timm_optim = dualadam.register_with_timm()

    assert {"dualadam", "invadam"} <= set(timm_optim.list_optimizers())
    model = timm.create_model("resnet18", num_classes=10)
    opt = timm_optim.create_optimizer_v2(model, "dualadam", lr=1e-2, weight_decay=0.05, switch_rate=1e-3)
    assert isinstance(opt, DualAdam)
    by_decay = {g["weight_decay"]: g for g in opt.param_groups}
    assert set(by_decay) == {0.0, 0.05}, "timm puts biases and norm weights in a no-decay group"
    assert all(p.ndim <= 1 for p in by_decay[0.0]["params"])
    assert all(g["switch_rate"] == 1e-3 and g["lr"] == 1e-2 for g in opt.param_groups)
    inv = timm_optim.create_optimizer_v2(model, "invadam", lr=1e-3)
    assert isinstance(inv, InvAdam) and inv.param_groups[0]["inverse_adam_rate"] == 1.0


def test_timm_built_dualadam_trains_as_the_plain_loop():
    pytest.importorskip("timm")
    timm_optim = dualadam.register_with_timm()
    model = tiny_model()
    opt = timm_optim.create_optimizer_v2(model, "dualadam", filter_bias_and_bn=False, **HYPER)
    x, y = data()
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
    assert_dualadam_past_the_hand_over(opt)
    assert_same_parameters(model, plain_loop(tiny_model()), rtol=0, atol=0)
