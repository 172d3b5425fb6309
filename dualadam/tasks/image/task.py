"""Image classification: a dataset from ``dualadam.tasks.image.data``, a model from ``dualadam.tasks.image.models``, cross-entropy."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from dualadam.tasks.image.data import build_image_data
from dualadam.tasks.image.models import build_model
from dualadam.training.metrics import RunningTotals
from dualadam.training.runtime import Runtime


class ImageClassification:
    """Batches are ``(images, labels)``: float NCHW normalized images and int64 class indices.

    With the in-memory loader (``dataset.loader``) batches arrive already on the device, in the runtime's
    memory format and autocast dtype (``runtime.input_dtype``), so ``_to_device`` does nothing; DataLoader
    batches arrive as float32 on the CPU and are moved here.
    """

    def __init__(self, cfg: DictConfig, runtime: Runtime):
        data = build_image_data(
            cfg.dataset, batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
            num_workers=cfg.trainer.num_workers, seed=cfg.seed, rank=runtime.rank, world_size=runtime.world_size,
            device=runtime.device, dtype=runtime.input_dtype, memory_format=runtime.memory_format,
        )
        self.info = data.info
        self.runtime = runtime
        self.label_smoothing = float(cfg.trainer.get("label_smoothing", 0.0))
        self.model = build_model(cfg.model, data.info).to(runtime.device, memory_format=runtime.memory_format)
        self.train_loader = data.train
        self.eval_loaders = {"train_eval": data.train_eval, **({} if data.val is None else {"val": data.val}),
                             "test": data.test}

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        images = images.to(self.runtime.device, non_blocking=True, memory_format=self.runtime.memory_format)
        return images, labels.to(self.runtime.device, non_blocking=True)

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The loss trained on: cross-entropy with ``trainer.label_smoothing``."""
        return self._step(model, batch, self.label_smoothing)

    def _step(self, model: nn.Module, batch, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        images, labels = self._to_device(batch)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        correct = (logits.argmax(dim=1) == labels).sum()
        return loss, correct, labels.shape[0]

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """Plain cross-entropy whatever ``label_smoothing`` trains with, so every run's evaluation losses
        (train_eval, val, test) measure the same thing and compare across recipes."""
        totals = RunningTotals(self.runtime.device)
        for batch in loader:
            totals.add(*self._step(model, batch, label_smoothing=0.0))  # the training step without backward
        return totals.read()
