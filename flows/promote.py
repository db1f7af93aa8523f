"""The ``promote`` flow: make a chosen model version the champion by hand, with the reason recorded.

    python -m flows.promote --version 20261125T010159Z-e8d31ce0866a [--reason "..."] [--storage ...]
    python -m flows.promote --version previous      (roll back to the champion before this one)

For what the automatic decision will not do: a model trained under another protocol than the
champion (their test pairs differ), or going back to an earlier version.
"""
from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from flows.runtime import run_storage
from flows.time_limits import limited
from storage import open_storage
from tasks.evaluation.champion_tasks import promote, roll_back
from tasks.registry import read_champion, read_report, resolve_version


@flow(**limited("promote"), flow_run_name="promote-{version}", log_prints=True)
def promote_flow(version: str = "previous", reason: str | None = None, storage: str | None = None) -> dict:
    """``version``: a registered, evaluated model version, ``latest``, or ``previous``: roll the
    champion back to the one before it (again: the one before that)."""
    storage = run_storage(storage)
    store = open_storage(storage)
    before = read_champion(store)
    if version == "previous":
        pointer = roll_back(reason or "rolled back by hand", storage)
    else:
        chosen = resolve_version(store, version)
        report = read_report(store, chosen)
        if report is None:  # matching takes its thresholds from the report, and later decisions compare with it
            raise ValueError(f"model {chosen} has no evaluation report; evaluate it first: "
                             f"python -m flows.evaluate --version {chosen}")
        decision = {"promote": True, "by_hand": True, "challenger": chosen, "champion": before,
                    "reason": reason or "promoted by hand",
                    "dataset": report.get("dataset"), "protocol": report.get("protocol"),
                    "challenger_score": (report.get("splits", {}).get("test") or {}).get("accuracy")}
        pointer = promote(chosen, decision, storage)
    get_run_logger().info("champion: %s -> %s (%s)", before, pointer["version"], pointer["decision"]["reason"])
    return pointer


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", required=True, help="a registered model version, latest, or previous (roll back)")
    ap.add_argument("--reason", default=None, help="recorded in models/champion.json")
    ap.add_argument("--storage", default=None, help="default: SIAMESE_STORAGE or ./var/store")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    pointer = promote_flow(args.version, args.reason, args.storage)
    print(f"champion: {pointer['version']} ({pointer['decision']['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
