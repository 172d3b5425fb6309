"""Data-parallel training across processes: ``torchrun`` (or a multi-task submitit job) -> DistributedDataParallel.

``torchrun --nproc_per_node=N -m dualadam.train ...`` starts N processes with ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` set; a submitit job with ``tasks_per_node=N`` gets the same from submitit's job environment.
Each process runs the whole ``train(cfg)``; this module holds what differs between them:

- ``trainer.batch_size`` is the *global* batch: each rank trains on ``batch_size / world_size`` samples per
  step (``per_rank_config``), so a run on N processes is the single-process run at the same batch, up to the
  order of float sums (and batch norm, which normalizes over a rank's share unless synced: see
  ``wrap_model``).
- Every rank takes the same number of steps per epoch (the fewest any rank has, ``agreed_steps_per_epoch``):
  shards differ by at most one sample, and a rank with one batch more would wait forever in its extra
  backward pass for the others.
- Training losses and accuracies are summed over ranks before they are read (``reduce_totals``). Evaluation
  is not sharded: every rank evaluates the full sets with identical weights and gets identical numbers.
- Rank 0 alone writes files, checkpoints and W&B; ``run.py`` decides that with ``is_main_process``.

The backend is gloo on CPU and nccl on CUDA, where rank ``r`` uses ``cuda:<LOCAL_RANK>``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os

import torch
import torch.distributed as dist
from omegaconf import DictConfig, open_dict
from torch import nn

from dualadam.training.metrics import RunningTotals
from dualadam.training.runtime import Runtime

log = logging.getLogger(__name__)

# Longer than any single step or evaluation, so a slow rank is not mistaken for a dead one; rank 0 writing a
# checkpoint while the others wait in the next collective is the longest expected gap.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclasses.dataclass(frozen=True)
class ProcessPlacement:
    """This process's position among the data-parallel processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its node, i.e. its GPU

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _submitit_placement() -> ProcessPlacement | None:
    """A submitit job with several tasks: export the ``env://`` variables torch reads, as torchrun sets them."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return None
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return ProcessPlacement(env.rank, env.world_size, env.local_rank)


def placement_from_environment() -> ProcessPlacement:
    """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, else a multi-task submitit job's, else one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return ProcessPlacement(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                                int(os.environ.get("LOCAL_RANK", 0)))
    return _submitit_placement() or ProcessPlacement()


def start_process_group(placement: ProcessPlacement, runtime: Runtime) -> Runtime:
    """Join the run's process group (if there is more than one process) and return the runtime with this
    process's rank, world size and device (``cuda:<local_rank>`` on CUDA)."""
    if not placement.is_distributed:
        return runtime
    device = runtime.device
    if device.type == "cuda":
        device = torch.device("cuda", placement.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=placement.rank, world_size=placement.world_size,
                                timeout=COLLECTIVE_TIMEOUT)
        log.info("Joined process group: rank %d of %d (%s, %s)", placement.rank, placement.world_size, backend,
                 device)
    return dataclasses.replace(runtime, device=device, rank=placement.rank, world_size=placement.world_size)


def end_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process(runtime: Runtime | None) -> bool:
    return runtime is None or runtime.rank == 0


def per_rank_config(cfg: DictConfig, runtime: Runtime) -> DictConfig:
    """``cfg`` with ``trainer.batch_size`` divided among the ranks: what each rank's task loads per step.

    Tasks read ``cfg.trainer.batch_size`` as their own batch, so every task gets data parallelism without
    knowing about it. Raises ``ValueError`` when the global batch does not divide evenly.
    """
    if runtime.world_size == 1:
        return cfg
    batch = int(cfg.trainer.batch_size)
    if batch % runtime.world_size:
        raise ValueError(f"trainer.batch_size={batch} is the global batch and must divide evenly among the "
                         f"{runtime.world_size} processes; use a multiple of {runtime.world_size}")
    local = cfg.copy()
    with open_dict(local):
        local.trainer.batch_size = batch // runtime.world_size
    return local


def agreed_steps_per_epoch(steps: int, runtime: Runtime) -> int:
    """The fewest steps per epoch any rank has (one collective, once per run)."""
    if runtime.world_size == 1:
        return steps
    fewest = torch.tensor([steps], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
    if int(fewest) != steps:
        log.info("Rank %d has %d batches per epoch; every rank takes %d", runtime.rank, steps, int(fewest))
    return int(fewest)


def reduce_totals(totals: RunningTotals, runtime: Runtime) -> RunningTotals:
    """Sum the ranks' loss sums, correct counts and sample counts in place (one collective per epoch)."""
    if runtime.world_size == 1:
        return totals
    packed = torch.stack([totals.loss_sum.double(), totals.correct.double(),
                          torch.tensor(float(totals.count), dtype=torch.float64, device=totals.loss_sum.device)])
    dist.all_reduce(packed)
    totals.loss_sum = packed[0].float()
    totals.correct = packed[1].round().long()
    totals.count = int(packed[2].item())
    return totals


def all_reduce_min(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def gather_objects(obj, runtime: Runtime) -> list:
    """Every rank's ``obj``, in rank order (small picklable objects such as RNG states)."""
    if runtime.world_size == 1:
        return [obj]
    gathered = [None] * runtime.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, runtime: Runtime):
    """Rank 0's ``obj`` on every rank."""
    if runtime.world_size == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.barrier()


def wrap_model(model: nn.Module, runtime: Runtime, *, sync_batchnorm: bool) -> nn.Module:
    """``DistributedDataParallel(model)`` for training; ``model`` itself with one process.

    ``sync_batchnorm`` converts batch norm to ``SyncBatchNorm`` so statistics cover the global batch, as in
    the single-process run; torch implements it for CUDA only, so on CPU batch norm stays per rank.
    """
    if runtime.world_size == 1:
        return model
    if sync_batchnorm and runtime.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("Batch norm is per rank (over batch_size / world_size samples): SyncBatchNorm needs CUDA "
                    "(or trainer.sync_batchnorm=false was set)")
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def replicas_identical(model: nn.Module, runtime: Runtime) -> bool:
    """Whether every rank holds bitwise the same parameters and buffers as rank 0 (one broadcast of the model;
    called once, at the end of a run, to catch replicas that drifted apart)."""
    if runtime.world_size == 1:
        return True
    same = True
    for tensor in [*model.parameters(), *model.buffers()]:
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        same &= torch.equal(reference, tensor.detach())
    agreed = torch.tensor([int(same)], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())
