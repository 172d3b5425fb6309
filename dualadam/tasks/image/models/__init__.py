"""Models: the paper's architectures (CIFAR ResNets, VGG16-BN, small ViTs) built on timm, a small CNN for
CPU runs, and any timm model by name, all sized by the dataset's ``DatasetInfo``."""

from dualadam.tasks.image.models.registry import (
    PAPER_MODELS,
    build_model,
    paper_model_names,
    unknown_model_problem,
)

__all__ = ["PAPER_MODELS", "build_model", "paper_model_names", "unknown_model_problem"]
