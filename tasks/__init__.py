"""Pure, typed pipeline steps; the ``@task`` wrappers live beside them in ``tasks.prefect_tasks``."""
