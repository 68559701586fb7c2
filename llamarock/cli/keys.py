"""``llamarock keys create|list|revoke``: credentials in the data dir's key store, shared with a running server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llamarock.auth.policy import parse_policy
from llamarock.cli import flags
from llamarock.errors import CliError, PolicyError
from llamarock.settings import Settings
from llamarock.storage.db import Database
from llamarock.storage.keys import KeyStore

SUMMARY = "create, list and revoke access keys"


def register(commands: flags.Commands) -> None:
    """Add the ``keys`` command group to the CLI's subcommands."""
    keys = flags.add_command(commands, "keys", SUMMARY,
                             "Create, list and revoke access keys in the data dir's key store (a running server "
                             "sees the change at once).")
    actions = flags.subcommands(keys, "keys_command", "keys commands")
    create = flags.add_command(actions, "create", "create an access key (and optionally a bearer API key)", run=run)
    create.add_argument("--principal", required=True, help="principal (user) name the key belongs to")
    create.add_argument("--policy", type=Path,
                        help="IAM policy JSON file for the principal (default: bedrock:*, s3:*)")
    create.add_argument("--rpm", type=int, help="requests per minute per model for the principal")
    create.add_argument("--tpm", type=int, help="tokens per minute per model for the principal")
    create.add_argument("--bearer", action="store_true", help="also issue a Bedrock API key (bearer token)")
    create.add_argument("--json", action="store_true", help="print JSON")
    flags.add_common_flags(create)
    listing = flags.add_command(actions, "list", "list keys (never their secrets)", run=run)
    listing.add_argument("--json", action="store_true", help="print JSON")
    flags.add_common_flags(listing)
    revoke = flags.add_command(actions, "revoke", "revoke a key and its bearer token, at once", run=run)
    revoke.add_argument("key_id", metavar="ID", help="access key id")
    flags.add_common_flags(revoke)


def _policy(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise CliError(f"cannot read policy file {path}: {error.strerror}") from None
    except ValueError as error:
        raise CliError(f"policy file {path} is not JSON: {error}") from None
    try:
        parse_policy(document)
    except PolicyError as error:
        raise CliError(f"policy file {path} is not a valid policy: {error}") from None
    assert isinstance(document, dict)
    return document


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(args)
    database = Database.for_settings(settings)
    store = KeyStore(database, settings.data_dir)
    try:
        if args.keys_command == "create":
            return _create(args, store, settings)
        if args.keys_command == "list":
            return _list(args, store)
        if not store.revoke(args.key_id):
            raise CliError(f"no key {args.key_id}")
        print(f"revoked {args.key_id}")
        return 0
    finally:
        database.close()


def _create(args: argparse.Namespace, store: KeyStore, settings: Settings) -> int:
    for name in ("rpm", "tpm"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name} must be at least 1")
    policy = _policy(args.policy) if args.policy else None
    try:
        created = store.create_key(args.principal, policy=policy, rpm=args.rpm, tpm=args.tpm, bearer=args.bearer)
    except ValueError as error:
        raise CliError(str(error)) from None
    out = {
        "principal": created.principal,
        "accessKeyId": created.access_key_id,
        "secretAccessKey": created.secret_access_key,
    }
    if created.bearer_token:
        out["bearerToken"] = created.bearer_token
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"principal:        {created.principal} (arn:aws:iam::{settings.account_id}:user/{created.principal})")
    print(f"accessKeyId:      {created.access_key_id}")
    print(f"secretAccessKey:  {created.secret_access_key}")
    if created.bearer_token:
        print(f"bearerToken:      {created.bearer_token}   (AWS_BEARER_TOKEN_BEDROCK; HTTPS only)")
    print("The secret and token are shown only now.")
    return 0


def _list(args: argparse.Namespace, store: KeyStore) -> int:
    rows = store.list_keys()
    if args.json:
        print(json.dumps([
            {"accessKeyId": r.access_key_id, "principal": r.principal, "status": r.status, "bearer": r.bearer,
             "created": r.created_at, "rpm": r.rpm, "tpm": r.tpm, "policy": r.has_policy}
            for r in rows
        ], indent=2))
        return 0
    print(f"{'ACCESS KEY ID':<20}  {'PRINCIPAL':<20}  {'STATUS':<8}  BEARER  RPM     TPM       CREATED")
    for r in rows:
        print(f"{r.access_key_id:<20}  {r.principal:<20}  {r.status:<8}  {'yes' if r.bearer else 'no':<6}  "
              f"{r.rpm or '-'!s:<6}  {r.tpm or '-'!s:<8}  {r.created_at}")
    return 0
