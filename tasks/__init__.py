"""Pipeline stages as packages (data, training, evaluation, matching): pure steps, each stage with
one module of thin Prefect ``@task`` wrappers (``prefect_tasks.py``). Shared by every stage:
``images`` (the one decoder and crop), ``registry`` (models in storage), ``artifacts``."""
