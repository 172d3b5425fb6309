"""dualadam: the DualAdam and InvAdam optimizers (arXiv 2603.07122) and an experiment suite around them."""

from dualadam.optim import PAPER_SWITCH_RATE, DualAdam, InvAdam
from dualadam.optim.timm_registry import register_with_timm

__version__ = "0.1.0"
__all__ = ["DualAdam", "InvAdam", "PAPER_SWITCH_RATE", "__version__"]

register_with_timm()
