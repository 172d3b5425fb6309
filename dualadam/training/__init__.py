"""Training: the task-agnostic trainer, the optimizer and scheduler factories, metrics, outputs and W&B.

``train(cfg)`` lives in ``dualadam.training.run``; the Hydra entrypoint ``dualadam.train`` wraps it.
"""
