"""Data stage: download -> extract and index -> skew analysis -> pairs (pure steps in ``steps``,
Prefect wrappers in ``prefect_tasks``)."""
