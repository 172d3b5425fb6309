"""Training: the task-agnostic trainer, the optimizer and scheduler factories, metrics, outputs and W&B.

``train(cfg, task)`` lives in ``dualadam.training.run``; ``dualadam.train.train(cfg)`` gives it the task
``cfg.task`` names (the core imports no task), and the Hydra entrypoint ``dualadam.train`` wraps that. Runs that
survive and scale: ``run_directory`` (identity, skip/resume/start), ``resume`` and ``checkpoint`` (exact
resume), ``guard`` and ``preemption`` (divergence, signals), ``distributed`` (DDP).
"""
