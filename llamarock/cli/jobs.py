"""``llamarock jobs list|show|watch``: a running server's batch inference jobs (docs/batch.md).

The jobs live in the server, so this asks it through its Bedrock API (ListModelInvocationJobs,
GetModelInvocationJob) with boto3, signed with the AWS credentials botocore finds (unsigned when there are none,
as ``--auth dev`` allows). ``watch`` draws a live progress bar (``rich``) with records per second and the time
left, until the job ends.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config

from llamarock.cli import flags
from llamarock.cli.quotas import default_endpoint
from llamarock.errors import CliError

SUMMARY = "a running server's batch inference jobs: list, show, watch (live progress)"
FINISHED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")


def register(commands: flags.Commands) -> None:
    """Add the ``jobs`` command group to the CLI's subcommands."""
    jobs = flags.add_command(commands, "jobs", SUMMARY,
                             "Batch inference jobs (CreateModelInvocationJob) of a running server, through its "
                             "Bedrock API, signed with the AWS credentials botocore finds.")
    actions = flags.subcommands(jobs, "jobs_command", "jobs commands")
    listing = flags.add_command(actions, "list", "list the jobs, newest first", run=run_list)
    listing.add_argument("--status", help="only jobs with this status (InProgress, Completed...)")
    listing.add_argument("--name-contains", help="only jobs whose name contains this")
    show = flags.add_command(actions, "show", "one job: status, message, counts, input and output", run=run_show)
    show.add_argument("job", help="the job's ARN or id")
    watch = flags.add_command(actions, "watch", "a live progress bar of one job until it ends", run=run_watch)
    watch.add_argument("job", help="the job's ARN or id")
    watch.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")
    for parser in (listing, show, watch):
        parser.add_argument("--endpoint", help="server URL (default: http(s)://<host>:<port> from the settings)")
        parser.add_argument("--json", action="store_true", help="print the server's JSON answer")
        flags.add_common_flags(parser)


def client(args: argparse.Namespace) -> Any:
    """A boto3 ``bedrock`` client on the server's endpoint."""
    settings = flags.settings_from(args)
    endpoint = args.endpoint or default_endpoint(settings)
    session = boto3.session.Session(region_name=settings.region)
    config = Config(retries={"max_attempts": 2}) if session.get_credentials() is not None else Config(
        signature_version=UNSIGNED, retries={"max_attempts": 2})
    return session.client("bedrock", endpoint_url=endpoint, config=config)


def _call(method: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = method(**kwargs)
    except botocore.exceptions.ClientError as error:
        details = error.response.get("Error", {})
        raise CliError(f"{details.get('Code')}: {details.get('Message')}") from None
    except botocore.exceptions.EndpointConnectionError as error:
        raise CliError(f"{error}; is `llamarock serve` running there? Pass --endpoint otherwise.") from None
    answer.pop("ResponseMetadata", None)
    return answer


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _counts(job: dict[str, Any]) -> str:
    total = job.get("totalRecordCount")
    return (f"{job.get('processedRecordCount', 0)}/{total if total is not None else '?'} "
            f"({job.get('errorRecordCount', 0)} failed)")


def run_list(args: argparse.Namespace) -> int:
    bedrock = client(args)
    filters: dict[str, Any] = {}
    if args.status:
        filters["statusEquals"] = args.status
    if args.name_contains:
        filters["nameContains"] = args.name_contains
    jobs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = _call(bedrock.list_model_invocation_jobs, **filters, **({"nextToken": token} if token else {}))
        jobs.extend(page.get("invocationJobSummaries", []))
        token = page.get("nextToken")
        if not token:
            break
    if args.json:
        print(json.dumps(jobs, indent=2, default=_default))
        return 0
    if not jobs:
        print("No batch inference jobs.")
        return 0
    rows = [[job["jobArn"].rsplit("/", 1)[-1], job.get("jobName", ""), job["status"], _counts(job),
             job["modelId"], job["submitTime"].strftime("%Y-%m-%d %H:%M:%S")] for job in jobs]
    headings = ["JOB", "NAME", "STATUS", "RECORDS", "MODEL", "SUBMITTED"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    for line in (headings, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def run_show(args: argparse.Namespace) -> int:
    job = _call(client(args).get_model_invocation_job, jobIdentifier=args.job)
    if args.json:
        print(json.dumps(job, indent=2, default=_default))
        return 0
    output = job["outputDataConfig"].get("s3OutputDataConfig", {}).get("s3Uri", "")
    lines = [
        ("Job", job["jobArn"]), ("Name", job.get("jobName", "")), ("Status", job["status"]),
        ("Message", job.get("message", "")), ("Model", job["modelId"]),
        ("Type", job.get("modelInvocationType", "InvokeModel")), ("Records", _counts(job)),
        ("Input", job["inputDataConfig"].get("s3InputDataConfig", {}).get("s3Uri", "")),
        ("Output", f"{output.rstrip('/')}/{job['jobArn'].rsplit('/', 1)[-1]}/"),
        ("Submitted", str(job["submitTime"])), ("Ended", str(job.get("endTime", "-"))),
    ]
    for name, value in lines:
        print(f"{name + ':':<11}{value}")
    return 0


def run_watch(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bedrock = client(args)
    job = _call(bedrock.get_model_invocation_job, jobIdentifier=args.job)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} records/s"), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(job.get("jobName", args.job), total=job.get("totalRecordCount"),
                                 completed=job.get("processedRecordCount", 0), rate="-", status=job["status"])
        while True:
            done = job.get("processedRecordCount", 0)
            progress.update(task, total=job.get("totalRecordCount"), completed=done, status=job["status"])
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:.2f}" if speed else "-")
            if job["status"] in FINISHED:
                break
            time.sleep(args.interval)
            job = _call(bedrock.get_model_invocation_job, jobIdentifier=args.job)
    print(f"{job['status']}: {job.get('message') or _counts(job)}")
    return 0 if job["status"] in ("Completed", "PartiallyCompleted") else 1
