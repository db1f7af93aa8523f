"""Time limits of the flows: a run past its limit fails (state TimedOut) with the limit named,
instead of holding its deployment's slot and every later run behind it.

Minutes per flow, over these defaults from ``SIAMESE_TIME_LIMITS`` (JSON), read when the run's
process imports the flow: on a worker, set it in the work pool's job variables (``env``) or per run
(``prefect deployment run nightly-retrain/nightly-retrain -jv env='{"SIAMESE_TIME_LIMITS": ...}'``).
"""
from __future__ import annotations

from settings import settings

DEFAULT_MINUTES = {
    "data": 120,             # LFW from a mirror: ~3 min; a first index of a large folder takes longer
    "train": 240,            # the scratch recipe's 45-minute budget (the pretrained twin: 10) + registration
    "evaluate": 90,
    "enrol": 360,
    "match": 720,            # millions of probes
    "nightly-retrain": 360,  # data + train + evaluate + enrol: must end before the next night
    "promote": 15,
    "siamese-faces": 480,    # the main job
}
# Training's own budget stops it after an epoch; the task's limit leaves room for that epoch,
# the final validation and the upload.
TRAIN_TASK_MARGIN = 1.25, 15 * 60


def time_limit_minutes(flow_name: str) -> float:
    limits = {**DEFAULT_MINUTES, **settings().time_limits}
    if flow_name not in limits:
        raise KeyError(f"no time limit for flow {flow_name!r}")
    return float(limits[flow_name])


def time_limit_seconds(flow_name: str) -> float:
    return 60.0 * time_limit_minutes(flow_name)


def train_task_seconds(budget_minutes: float) -> float:
    factor, extra = TRAIN_TASK_MARGIN
    return budget_minutes * 60 * factor + extra


def check_fits(flow_name: str, budget_minutes: float) -> None:
    """Refuse up front a training budget that the flow's time limit would cut short."""
    needed = train_task_seconds(budget_minutes) / 60
    limit = time_limit_minutes(flow_name)
    if needed > limit:
        raise ValueError(f"a training budget of {budget_minutes:g} min needs up to {needed:.0f} min, but the "
                         f"{flow_name} flow's time limit is {limit:g} min: shorten the budget or raise the limit "
                         f"(SIAMESE_TIME_LIMITS='{{\"{flow_name}\": {needed:.0f}}}')")


def explain_failure(flow, flow_run, state) -> None:
    """on_failure hook: a run stopped by its time limit says which limit and how to change it."""
    if state.name != "TimedOut":
        return
    from prefect.logging.loggers import flow_run_logger

    limit = time_limit_minutes(flow.name)
    flow_run_logger(flow_run, flow).error(
        "%s passed its time limit of %g min and was stopped; what it had finished stays in storage and a re-run "
        "resumes it; the champion is unchanged unless it was promoted before. Time spent waiting for the "
        "siamese-training slot counts (see the run's log). Raise the limit with "
        "SIAMESE_TIME_LIMITS='{\"%s\": <minutes>}' in the work pool's job variables.", flow.name, limit, flow.name)


def limited(flow_name: str) -> dict:
    """The ``@flow`` options every deployed flow takes: its time limit and the hook that explains it."""
    return {"name": flow_name, "timeout_seconds": time_limit_seconds(flow_name), "on_failure": [explain_failure]}
