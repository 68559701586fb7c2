"""``llamarock quotas [--endpoint URL] [--json]``: a running server's quotas and their use, per principal and model.

The token buckets live in the server process, so this asks it (``GET /llamarock/quotas``) rather than reading the
data dir. The request is signed with the AWS credentials botocore finds (``AWS_ACCESS_KEY_ID``..., a profile), as
``--auth enforce`` needs; in ``--auth dev`` mode it may be unsigned.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

import botocore.session

from llamarock.cli import flags
from llamarock.errors import CliError
from llamarock.services.signing import signed_headers
from llamarock.settings import Settings

PATH = "/llamarock/quotas"


SUMMARY = "a running server's quotas and use per principal and model, and provisioned reservations"


def register(commands: flags.Commands) -> None:
    """Add the ``quotas`` command to the CLI's subcommands."""
    quotas = flags.add_command(
        commands, "quotas", SUMMARY,
        "A running server's quotas and their use per principal and model, provisioned reservations and deployment "
        "slots (GET /llamarock/quotas, signed with the AWS credentials botocore finds).", run,
    )
    quotas.add_argument("--endpoint", help="server URL (default: http(s)://<host>:<port> from the settings)")
    quotas.add_argument("--json", action="store_true", help="print the server's JSON answer")
    flags.add_common_flags(quotas)


def default_endpoint(settings: Settings) -> str:
    """Where `llamarock serve` with these settings listens (a wildcard address is reached on loopback)."""
    host = settings.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{host}:{settings.port}"


def fetch(endpoint: str, region: str) -> dict[str, Any]:
    """The server's quotas document; CliError when it cannot be had."""
    url = endpoint.rstrip("/") + PATH
    credentials = botocore.session.Session().get_credentials()
    headers = signed_headers("GET", url, {}, b"", credentials, region)
    request = urllib.request.Request(url, headers=headers, method="GET")
    context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE")) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("message", "")
        except ValueError:
            message = ""
        raise CliError(f"{url} answered {error.code}: {message or error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CliError(
            f"cannot reach {url} ({reason}); is `llamarock serve` running there? Pass --endpoint otherwise."
        ) from None
    except ValueError:
        raise CliError(f"{url} did not answer JSON; is it a llamarock server?") from None
    if not isinstance(document, dict):
        raise CliError(f"{url} did not answer a quotas document; is it a llamarock server?")
    return document


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(args)
    document = fetch(args.endpoint or default_endpoint(settings), settings.region)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    _print(document)
    return 0


def _limit(value: Any) -> str:
    return "unlimited" if value is None else str(value)


def _table(headings: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    for line in (headings, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _print(document: dict[str, Any]) -> None:
    defaults = document.get("defaults") or {}
    print(f"Default quotas per principal and model: rpm {_limit(defaults.get('rpmLimit'))}, "
          f"tpm {_limit(defaults.get('tpmLimit'))}")
    print()
    quotas = document.get("quotas") or []
    if quotas:
        _table(["PRINCIPAL", "MODEL", "RPM USED/LIMIT", "TPM USED/LIMIT"], [
            [q["principal"], q["model"], f"{q['rpmUsed']}/{_limit(q['rpmLimit'])}",
             f"{q['tpmUsed']}/{_limit(q['tpmLimit'])}"]
            for q in quotas
        ])
    else:
        print("No principal has used a limited model since the server started.")
    provisioned = document.get("provisioned") or []
    print()
    if provisioned:
        _table(["PROVISIONED MODEL", "MODEL", "STATUS", "UNITS", "SEQUENCES IN USE/RESERVED", "WAITING",
                "TPM USED/LIMIT"], [
            [p["provisionedModelName"], p["modelId"], str(p.get("status") or "-"), str(p["modelUnits"]),
             f"{p['sequencesInUse']}/{p['sequences']}", str(p["waiting"]), f"{p['tpmUsed']}/{p['tpmLimit']}"]
            for p in provisioned
        ])
    else:
        print("No provisioned throughput.")
    deployments = document.get("deployments") or []
    if deployments:
        print()
        _table(["DEPLOYMENT", "MAX PARALLEL", "RESERVED", "ON-DEMAND IN USE/SEQUENCES", "ON-DEMAND WAITING"], [
            [d["deployment"], str(d["maxParallel"]), str(d["reservedSequences"]),
             f"{d['onDemandInUse']}/{d['onDemandSequences']}", str(d["onDemandWaiting"])]
            for d in deployments
        ])
