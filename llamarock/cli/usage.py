"""``llamarock usage [--by model|principal|tag|day|tier] [--since DATE] [--json] [--provisioned]``: the usage report.

It reads the metadata database a running server writes (the server writes each record within moments of the
answer), so it works while the server runs and after it stopped. On-demand invocations are priced per token;
provisioned throughput accrues its hourly price per model unit while InService, shown after the table, or alone
with ``--provisioned`` (``--json``: one row per provisioned model and model it held).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from llamarock.cli import flags
from llamarock.errors import CliError, ValidationException
from llamarock.observability.usage import (
    GROUPINGS,
    Grouping,
    UsageRecorder,
    UsageStore,
    UsageSummary,
    parse_grouping,
    parse_since,
)
from llamarock.services.provisioning import ProvisionedCost, accrued_costs
from llamarock.settings import Settings
from llamarock.storage.db import Database
from llamarock.storage.provisioned import ProvisionedStore

HEADINGS = {"model": "MODEL ID", "principal": "PRINCIPAL", "tag": "TAG", "day": "DAY (UTC)"}


SUMMARY = "tokens, invocations and cost per model, principal, tag or day"


def register(commands: flags.Commands) -> None:
    """Add the ``usage`` command to the CLI's subcommands."""
    usage = flags.add_command(
        commands, "usage", SUMMARY,
        "Tokens, invocations and cost per model, principal, tag or day, from the metadata database a running (or "
        "stopped) server writes; provisioned throughput's accrued hourly cost after the table.", run,
    )
    usage.add_argument("--by", default="model", choices=GROUPINGS, help="grouping (default: model)")
    usage.add_argument("--since", help="only invocations from this UTC date (YYYY-MM-DD) or ISO 8601 date-time on")
    usage.add_argument("--json", action="store_true", help="print a JSON list of rows")
    usage.add_argument("--provisioned", action="store_true",
                       help="provisioned throughput's accrued hourly cost instead of on-demand usage")
    flags.add_common_flags(usage)


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(args)
    try:
        by = parse_grouping(args.by)
        since = parse_since(args.since) if args.since else None
    except ValidationException as error:
        raise CliError(error.message) from None
    database = Database.for_settings(settings)
    try:
        return _report(args, by, since, settings, database)
    finally:
        database.close()


def _report(args: argparse.Namespace, by: Grouping, since: datetime | None, settings: Settings,
            database: Database) -> int:
    # Rows journaled by a server that was killed and not restarted are written first, so the report has them.
    UsageRecorder(settings, UsageStore(database)).close()
    costs = accrued_costs(ProvisionedStore(database), settings.prices, since or datetime(1970, 1, 1, tzinfo=UTC),
                          datetime.now(UTC))
    if args.provisioned:
        if args.json:
            print(json.dumps([_provisioned_json(cost) for cost in costs], indent=2))
        else:
            _provisioned_table(costs)
        return 0
    rows = UsageStore(database).report(by, since)
    if args.json:
        print(json.dumps([row.to_json(by) for row in rows], indent=2))
        return 0
    _table(rows, HEADINGS[by])
    if costs:
        print()
        _provisioned_table(costs)
    return 0


def _provisioned_json(cost: ProvisionedCost) -> dict[str, Any]:
    return {
        "provisionedModelArn": cost.provisioned_model_arn,
        "provisionedModelName": cost.provisioned_model_name,
        "modelId": cost.model_id,
        "modelUnits": cost.units,
        "hours": float(cost.hours),
        "hourlyUsdPerUnit": float(cost.hourly_usd) if cost.hourly_usd is not None else None,
        "costUsd": float(cost.cost_usd) if cost.cost_usd is not None else None,
    }


def _provisioned_table(costs: list[ProvisionedCost]) -> None:
    if not costs:
        print("no provisioned throughput held")
        return
    print("PROVISIONED THROUGHPUT (hourly price per model unit while InService)")
    header = ("NAME", "MODEL ID", "UNITS", "HOURS", "USD/UNIT-HOUR", "COST USD")
    lines = [
        (c.provisioned_model_name, c.model_id, str(c.units), f"{c.hours:.4f}",
         f"{c.hourly_usd:f}" if c.hourly_usd is not None else "unpriced",
         f"{c.cost_usd:.6f}" if c.cost_usd is not None else "unpriced")
        for c in costs
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip())


def _cost(row: UsageSummary) -> str:
    if row.cost is None:
        return "unpriced"
    text = f"{row.cost:f}"
    return text + (f" (+{row.unpriced} unpriced)" if row.unpriced else "")


def _table(rows: list[UsageSummary], heading: str) -> None:
    if not rows:
        print("no usage recorded yet")
        return
    header = (heading, "INVOCATIONS", "INPUT", "OUTPUT", "CACHE READ", "ERRORS", "THROTTLES", "COST USD")
    lines = [
        (row.key, str(row.invocations), str(row.input_tokens), str(row.output_tokens), str(row.cache_read_tokens),
         str(row.client_errors + row.server_errors), str(row.throttles), _cost(row))
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip())
    if any(row.unpriced for row in rows):
        print("\nunpriced: the catalog has no price for these models; set one in the config, e.g.\n"
              '  [prices."meta.llama3-8b-instruct-v1:0"]\n  input = 0.30   # USD per 1M tokens\n  output = 0.60')
