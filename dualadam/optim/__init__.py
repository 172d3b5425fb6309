"""Optimizers: DualAdam, InvAdam, their mixing schedules and update implementations."""

from dualadam.optim.dualadam import PAPER_SWITCH_RATE, DualAdam, InvAdam
from dualadam.optim.schedules import MIXING_SCHEDULES, inverse_adam_rate, register_mixing_schedule
from dualadam.optim.state_dicts import load_moments

__all__ = ["DualAdam", "InvAdam", "PAPER_SWITCH_RATE", "MIXING_SCHEDULES", "inverse_adam_rate",
           "register_mixing_schedule", "load_moments"]
