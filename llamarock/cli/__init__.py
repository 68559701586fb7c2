"""The ``llamarock`` command: ``serve``, ``models``, ``keys``, ``usage``, ``quotas`` and ``jobs``, one module each.

Settings flags are generated from the settings tree (:mod:`llamarock.cli.flags`). Every command raises
:class:`~llamarock.errors.CliError` when it cannot do what it was asked; :func:`main` prints it, and any
configuration error, as one line on stderr and returns 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from llamarock.cli import flags
from llamarock.errors import BedrockError, CliError, ConfigError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from llamarock.cli import jobs, keys, models, quotas, serve, usage

    parser = flags.Parser(
        prog="llamarock", formatter_class=flags.Formatter,
        description="Amazon Bedrock's Llama API, self-hosted.",
        epilog="`llamarock COMMAND --help` describes a command; `llamarock serve --help` lists every setting as a "
        "flag.",
    )
    commands = flags.subcommands(parser, "command", "commands")
    for module in (serve, models, keys, usage, quotas, jobs):
        module.register(commands)
    return parser


def _location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_lines(error: ValidationError) -> list[str]:
    """One readable line per error: ``port: Input should be less than or equal to 65535``."""
    lines = []
    for detail in error.errors(include_url=False, include_input=False):
        message = str(detail["msg"]).removeprefix("Value error, ")
        where = _location(tuple(detail["loc"]))
        lines.append(f"{where}: {message}" if where else message)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 (after one line on stderr per problem) when it cannot be done."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    run: Callable[[argparse.Namespace], int] = args.run
    # What llamarock writes (metadata database, audit log, invocation-log spool, blobs) holds keys, prompts and
    # answers: readable by its own user only.
    os.umask(0o077)
    try:
        return run(args)
    except ValidationError as error:
        for line in validation_lines(error):
            print(f"llamarock: configuration error: {line}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"llamarock: configuration error: {error}", file=sys.stderr)
        return 2
    except CliError as error:
        print(f"llamarock: {error}", file=sys.stderr)
        return 2
    except BedrockError as error:  # e.g. the metadata database is unavailable
        print(f"llamarock: {error.code}: {error.message}", file=sys.stderr)
        return 1
