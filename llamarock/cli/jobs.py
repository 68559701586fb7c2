"""``llamarock jobs list|show|watch``: a running server's batch inference jobs (docs/batch.md), and with
``--kind customization`` (or a model-customization-job ARN) its fine-tuning jobs (docs/customization.md).

The jobs live in the server, so this asks it through its Bedrock API (ListModelInvocationJobs,
GetModelInvocationJob) with boto3, signed with the AWS credentials botocore finds (unsigned when there are none,
as ``--auth dev`` allows). ``watch`` draws a live progress bar (``rich``) with records per second and the time
left, until the job ends. A fine-tuning job's steps and losses are not part of Bedrock's answer: ``watch`` and
``show`` read them from the server's ``/metrics`` (``llamarock_customization_job_*``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.request
from datetime import datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config

from llamarock.cli import flags
from llamarock.cli.quotas import default_endpoint
from llamarock.errors import CliError

SUMMARY = "a running server's batch inference and fine-tuning jobs: list, show, watch (live progress)"
FINISHED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
CUSTOMIZATION_ARN = ":model-customization-job/"


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
        parser.add_argument("--kind", choices=("batch", "customization"), default=None,
                            help="batch inference jobs (the default) or fine-tuning jobs (CreateModelCustomizationJob);"
                            " a job ARN says which by itself")
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


def _customization(args: argparse.Namespace) -> bool:
    return args.kind == "customization" or CUSTOMIZATION_ARN in (getattr(args, "job", None) or "")


def _all_jobs(args: argparse.Namespace, operation: Any, member: str) -> list[dict[str, Any]]:
    """Every page of a List...Jobs operation, with the --status and --name-contains filters."""
    filters: dict[str, Any] = {}
    if args.status:
        filters["statusEquals"] = args.status
    if args.name_contains:
        filters["nameContains"] = args.name_contains
    jobs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = _call(operation, **filters, **({"nextToken": token} if token else {}))
        jobs.extend(page.get(member, []))
        token = page.get("nextToken")
        if not token:
            return jobs


def run_list(args: argparse.Namespace) -> int:
    if _customization(args):
        return _list_customization(args)
    jobs = _all_jobs(args, client(args).list_model_invocation_jobs, "invocationJobSummaries")
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
    if _customization(args):
        return _show_customization(args)
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
    if _customization(args):
        return _watch_customization(args)
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


# ----------------------------------------------------------------------------------------------- fine-tuning jobs


def _training(args: argparse.Namespace, job_arn: str) -> dict[str, float]:
    """A running fine-tuning job's gauges from ``/metrics``: done, total, checkpoint, epoch, training, validation,
    rate (missing ones are absent: the job is not training)."""
    settings = flags.settings_from(args)
    endpoint = (args.endpoint or default_endpoint(settings)).rstrip("/")
    job_id = job_arn.rsplit("/", 1)[-1]
    try:
        with urllib.request.urlopen(endpoint + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    pattern = re.compile(r'^llamarock_customization_job_(\w+)\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None or f'job="{job_id}"' not in match[2]:
            continue
        label = re.search(r'(?:state|kind)="(\w+)"', match[2])
        name = {"steps_per_second": "rate", "epoch": "epoch"}.get(match[1], label[1] if label else match[1])
        found[name] = float(match[3])
    return found


def _describe(training: dict[str, float]) -> str:
    if "total" not in training:
        return "-"
    text = f"step {int(training.get('done', 0))}/{int(training['total'])}, epoch {int(training.get('epoch', 0))}"
    if "training" in training:
        text += f", loss {training['training']:.4f}"
    if "validation" in training:
        text += f", validation loss {training['validation']:.4f}"
    return text


def _list_customization(args: argparse.Namespace) -> int:
    jobs = _all_jobs(args, client(args).list_model_customization_jobs, "modelCustomizationJobSummaries")
    if args.json:
        print(json.dumps(jobs, indent=2, default=_default))
        return 0
    if not jobs:
        print("No fine-tuning jobs.")
        return 0
    rows = [[job["jobArn"].rsplit("/", 1)[-1], job["jobName"], job["status"],
             _describe(_training(args, job["jobArn"])) if job["status"] in ("InProgress", "Stopping") else "-",
             job["baseModelArn"].rsplit("/", 1)[-1], job["creationTime"].strftime("%Y-%m-%d %H:%M:%S")]
            for job in jobs]
    headings = ["JOB", "NAME", "STATUS", "PROGRESS", "BASE MODEL", "CREATED"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    for line in (headings, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _show_customization(args: argparse.Namespace) -> int:
    job = _call(client(args).get_model_customization_job, jobIdentifier=args.job)
    if args.json:
        print(json.dumps(job, indent=2, default=_default))
        return 0
    losses = []
    if "trainingMetrics" in job:
        losses.append(f"training {job['trainingMetrics'].get('trainingLoss')}")
    for metric in job.get("validationMetrics", []):
        losses.append(f"validation {metric.get('validationLoss')}")
    lines = [
        ("Job", job["jobArn"]), ("Name", job["jobName"]), ("Status", job["status"]),
        ("Failure", job.get("failureMessage", "")), ("Base", job["baseModelArn"]),
        ("Progress", _describe(_training(args, job["jobArn"]))), ("Loss", ", ".join(losses) or "-"),
        ("Hyper", ", ".join(f"{k}={v}" for k, v in job.get("hyperParameters", {}).items())),
        ("Training", job["trainingDataConfig"].get("s3Uri", "")), ("Output", job["outputDataConfig"]["s3Uri"]),
        ("Model", job.get("outputModelArn", f"{job['outputModelName']} (not made yet)")),
        ("Created", str(job["creationTime"])), ("Ended", str(job.get("endTime", "-"))),
    ]
    for name, value in lines:
        print(f"{name + ':':<11}{value}")
    return 0


def _watch_customization(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bedrock = client(args)
    job = _call(bedrock.get_model_customization_job, jobIdentifier=args.job)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TextColumn("{task.fields[loss]}"), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(job["jobName"], total=None, loss="", status=job["status"])
        while True:
            training = _training(args, job["jobArn"])
            loss = _describe(training).split(", ", 2)[2:] if "total" in training else []
            progress.update(task, total=training.get("total"), completed=training.get("done", 0),
                            loss=", ".join(loss), status=job["status"])
            if job["status"] in FINISHED:
                break
            time.sleep(args.interval)
            job = _call(bedrock.get_model_customization_job, jobIdentifier=args.job)
    print(f"{job['status']}: {job.get('failureMessage') or job.get('outputModelArn', '')}")
    return 0 if job["status"] == "Completed" else 1
