"""Training: the task-agnostic trainer, the optimizer and scheduler factories, metrics, outputs and W&B.

``train(cfg)`` lives in ``dualadam.training.run``; the Hydra entrypoint ``dualadam.train`` wraps it. Runs that
survive and scale: ``run_directory`` (identity, skip/resume/start), ``resume`` and ``checkpoint`` (exact
resume), ``guard`` and ``preemption`` (divergence, signals), ``distributed`` (DDP).
"""
