"""The image-classification task: its data (``data/``), its models (``models/``) and the task the trainer runs
(``task.py``)."""
