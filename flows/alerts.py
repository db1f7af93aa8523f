"""Failure alerts: one command sets up a Prefect notification block and an automation that fires it
when a run of any of the project's flows (nightly, training, matching, the main job...) fails,
crashes or passes its time limit.

    python -m flows.alerts --webhook https://hooks.example.com/siamese      (any HTTP endpoint)
    python -m flows.alerts --block my-slack-block                           (a notification block you made)
    python -m flows.alerts --webhook URL --flows nightly-retrain,match

Against the server in PREFECT_API_URL (`prefect server start`): automations run on the server, so
a run whose process died (Crashed) is reported as well as one that raised. Running it again
replaces the automation and updates the webhook; nothing else is touched. The webhook's user:password@,
path and query (where its token is) are kept in the block's secrets, not its plain url field. The webhook receives
JSON {"subject": ..., "body": ...}: the flow, the run, its final state and message, and the run's
address in the UI.
"""
from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit, urlunsplit

from flows.time_limits import DEFAULT_MINUTES

WEBHOOK_BLOCK = "siamese-alerts"
AUTOMATION = "siamese-faces: a run failed"
ALERTED_FLOWS = tuple(DEFAULT_MINUTES)  # every flow of the project (siamese-faces: the main job)
# A run that raised is Failed; a run past its time limit is TimedOut (a failed state of its own
# name); a run whose process died is Crashed.
ALERTED_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.TimedOut", "prefect.flow-run.Crashed")

SUBJECT = "siamese-faces: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
BODY = ("Flow {{ flow.name }}, run {{ flow_run.name }} ({{ flow_run.id }}) ended {{ flow_run.state.name }}"
        "{% if deployment %} (deployment {{ deployment.name }}){% endif %}: {{ flow_run.state.message }}\n"
        "Parameters and logs: {{ flow_run|ui_url }}")


def webhook_template(url: str) -> tuple[str, dict[str, str]]:
    """(the block's url, its secrets): only scheme://host:port in plain text; the user:password@ and
    the path and query, where webhooks carry their tokens (Slack's path, ?token=), as secrets."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--webhook must be an http(s) URL")
    userinfo, _, host = parts.netloc.rpartition("@")
    secrets = {"webhook_path": urlunsplit(("", "", parts.path, parts.query, parts.fragment))}
    if userinfo:
        secrets["webhook_userinfo"] = userinfo
    return f"{parts.scheme}://{'{{webhook_userinfo}}@' if userinfo else ''}{host}{{{{webhook_path}}}}", secrets


def save_webhook_block(url: str, name: str = WEBHOOK_BLOCK):
    """A Custom Webhook notification block that POSTs the alert's subject and body as JSON; the
    URL's token-bearing parts go in the block's secret field, never its plain ``url``."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    template, secrets = webhook_template(url)
    block = CustomWebhookNotificationBlock(name=name, url=template, secrets=secrets, method="POST",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block.save(name, overwrite=True)
    return CustomWebhookNotificationBlock.load(name)


def notification_block_id(name: str):
    """The id of a saved notification block of any type, by its block-document name."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        documents = [d for d in client.read_block_documents() if d.name == name]
    if not documents:
        raise LookupError(f"no block named {name!r} on this Prefect server: make it in the UI (Blocks) or use "
                          f"--webhook URL")
    return documents[0].id


def set_up_alerts(block_id, flows: tuple[str, ...] = ALERTED_FLOWS):
    """Create (or replace) the automation that sends the block's notification on a failed run."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification

    try:
        Automation.read(name=AUTOMATION).delete()
    except ValueError:
        pass  # none yet
    return Automation(
        name=AUTOMATION,
        description="siamese-faces: notify on a failed, timed-out or crashed run (made by python -m flows.alerts)",
        trigger=EventTrigger(
            expect=set(ALERTED_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(flows)},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ).create()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.alerts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--webhook", help=f"an HTTP(S) URL: saved as the Custom Webhook block {WEBHOOK_BLOCK!r}")
    where.add_argument("--block", help="the name of a notification block already saved (Slack, Teams, e-mail...)")
    ap.add_argument("--flows", default=",".join(ALERTED_FLOWS), help="comma-separated flow names to watch")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    flows = tuple(f.strip() for f in args.flows.split(",") if f.strip())
    if args.webhook:
        block_id = save_webhook_block(args.webhook)._block_document_id
        name = WEBHOOK_BLOCK
    else:
        block_id, name = notification_block_id(args.block), args.block
    automation = set_up_alerts(block_id, flows)
    print(f"automation {automation.name!r} ({automation.id}): a failed, timed-out or crashed run of "
          f"{', '.join(flows)} notifies through the block {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
