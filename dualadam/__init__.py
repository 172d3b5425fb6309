"""dualadam: the DualAdam and InvAdam optimizers (arXiv 2603.07122) and an experiment suite around them.

``import dualadam`` needs torch alone and changes no global torch setting. timm users add ``dualadam`` and
``invadam`` to ``timm.optim.create_optimizer_v2`` with ``dualadam.register_with_timm()``.
"""

from dualadam.integrations.timm import register_with_timm
from dualadam.optim import PAPER_SWITCH_RATE, DualAdam, InvAdam

__version__ = "0.1.0"
__all__ = ["DualAdam", "InvAdam", "PAPER_SWITCH_RATE", "register_with_timm", "__version__"]
