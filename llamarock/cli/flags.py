"""Command-line flags generated from the settings tree (``Settings.model_fields``), and the CLI's argparse helpers.

Every top-level setting whose type is a scalar (str, int, float, bool, Path, Decimal, a Literal, or Optional of
those) or a list of scalars (given comma-separated) is a flag: ``--`` plus the field name with ``_`` → ``-``, its
help the field's description. Dicts and lists of tables (``deployments``, ``prices``...) are config-file and
environment only, and so are secrets (a flag would show them in the process list).

The argparse default of every settings flag is None, so that a flag that is not given leaves the value to the
environment, the config file and the defaults (:func:`llamarock.settings.load_settings`); pydantic validates what
is given, exactly as it validates the environment and the file.
"""

from __future__ import annotations

import argparse
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeAlias

from pydantic.fields import FieldInfo

from llamarock.errors import ConfigError
from llamarock.settings import Settings, load_settings

#: The settings flags every command has besides ``--config``; ``serve`` has every settings flag.
COMMON_FIELDS = ("data_dir", "database_url", "engine")

#: Argument groups of ``serve --help``, in order; settings flags not named here go to "other settings".
SERVE_GROUPS: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "tls_cert", "tls_key"),
    "auth and quotas": ("auth", "account_id", "clock_skew_seconds", "default_rpm", "default_tpm"),
    "regions": ("region", "regions", "peer_access_key_id", "peer_timeout_s"),
    "engines": ("engine", "threads"),
    "storage": ("data_dir", "database_url", "blob_store_url", "blob_store_access_key_id", "blob_store_region",
                "invocation_log_spool_max_bytes", "invocation_log_retry_max_s"),
    "logging": ("log_level", "log_format", "audit_log_max_bytes", "audit_log_backups"),
    "provisioned throughput and prices": ("provisioned_sequences_per_unit", "provisioned_tpm_per_unit",
                                          "provisioning_seconds", "cache_read_price_fraction"),
}

_SCALARS: tuple[type, ...] = (str, int, float, bool, Path, Decimal)
_SETTINGS_FIELDS = "_settings_fields"  # the namespace attribute naming the settings flags a command has


@dataclass(frozen=True)
class FlagSpec:
    """How one setting is given on the command line."""

    name: str
    """The field name, also the argparse ``dest``."""
    scalar: type
    """The scalar type, or of each item for a list (``str`` for a Literal)."""
    is_list: bool
    choices: tuple[str, ...] | None
    """The Literal's values, if the type is a Literal."""

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "LLAMAROCK_" + self.name.upper()


def is_secret(name: str) -> bool:
    """Secrets get no flag: a flag's value shows in the process list."""
    return "secret" in name


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _scalar(annotation: Any) -> tuple[type, tuple[str, ...] | None] | None:
    """(type, Literal choices) of a scalar annotation, Optional allowed; None when it is not one."""
    annotation = _strip_annotated(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _scalar(members[0]) if len(members) == 1 else None
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(value, str) for value in values):
            return str, tuple(values)
        return None
    if isinstance(annotation, type) and issubclass(annotation, _SCALARS):
        return annotation, None
    return None


def flag_spec(name: str, field: FieldInfo) -> FlagSpec | None:
    """The flag of a setting; None for dicts, lists of tables and secrets (config file and environment only)."""
    if is_secret(name):
        return None
    scalar = _scalar(field.annotation)
    if scalar is not None:
        return FlagSpec(name, scalar[0], False, scalar[1])
    annotation = _strip_annotated(field.annotation)
    if typing.get_origin(annotation) is list and len(typing.get_args(annotation)) == 1:
        item = _scalar(typing.get_args(annotation)[0])
        if item is not None and item[0] is not bool:
            return FlagSpec(name, item[0], True, None)
    return None


def flag_specs() -> dict[str, FlagSpec]:
    """Every setting that has a flag, in the order of the settings tree."""
    specs = {name: flag_spec(name, field) for name, field in Settings.model_fields.items()}
    return {name: spec for name, spec in specs.items() if spec is not None}


def file_only_fields() -> list[str]:
    """Settings with no flag that are not secrets: dicts and lists of tables."""
    specs = flag_specs()
    return [name for name in Settings.model_fields if name not in specs and not is_secret(name)]


def secret_fields() -> list[str]:
    return [name for name in Settings.model_fields if is_secret(name)]


def shown_default(name: str) -> str:
    """The default of a setting as ``--help`` shows it; a default factory's value is computed (e.g. the data dir)."""
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if value is None or value == "" or value == []:
        return "empty"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def help_text(name: str) -> str:
    """A setting's flag help: its description, then its default."""
    description = Settings.model_fields[name].description or ""
    return f"{description} Default: {shown_default(name)}.".replace("%", "%%")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _metavar(spec: FlagSpec) -> str | None:
    if spec.choices is not None:
        return None  # argparse shows {a,b}
    if issubclass(spec.scalar, Path):
        base = "DIR" if spec.name.endswith("_dir") else "FILE"
    elif issubclass(spec.scalar, bool):
        base = "BOOL"
    elif issubclass(spec.scalar, int):
        base = "N"
    elif issubclass(spec.scalar, float | Decimal):
        base = "NUMBER"
    else:
        base = spec.name.rsplit("_", 1)[-1].upper()  # --host HOST, --database-url URL, --regions REGION,...
    return f"{base.removesuffix('S')},..." if spec.is_list else base


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, spec: FlagSpec) -> None:
    """Add one setting's flag: default None, the value checked by pydantic (Literal choices by argparse)."""
    options: dict[str, Any] = {"dest": spec.name, "default": None, "help": help_text(spec.name)}
    if spec.scalar is bool and not spec.is_list:
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["metavar"] = _metavar(spec)
        if spec.is_list:
            options["type"] = _comma_list
        if spec.choices is not None:
            options["choices"] = spec.choices
    parser.add_argument(spec.option, **options)


def _add_config(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="TOML config file; default: the environment's LLAMAROCK_CONFIG, else none.",
    )


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the settings flags of :data:`COMMON_FIELDS`, as every command but ``serve`` has them."""
    specs = flag_specs()
    group = parser.add_argument_group("settings (also LLAMAROCK_* environment variables and the config file)")
    _add_config(group)
    names = [name for name in COMMON_FIELDS if name in specs]
    for name in names:
        add_flag(group, specs[name])
    parser.set_defaults(**{_SETTINGS_FIELDS: tuple(names)})


def add_every_settings_flag(parser: argparse.ArgumentParser) -> None:
    """``--config`` and a flag for every setting that can have one, grouped by :data:`SERVE_GROUPS`."""
    specs = flag_specs()
    _add_config(parser.add_argument_group("configuration"))
    placed: set[str] = set()
    for title, names in SERVE_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            if name in specs and name not in placed:
                add_flag(group, specs[name])
                placed.add(name)
    rest = [spec for name, spec in specs.items() if name not in placed]
    if rest:
        group = parser.add_argument_group("other settings")
        for spec in rest:
            add_flag(group, spec)
    parser.set_defaults(**{_SETTINGS_FIELDS: tuple(specs)})


def settings_epilog() -> str:
    """What ``serve --help`` says after the flags: priorities, and the settings that have no flag."""
    return (
        "Priority: flags, then LLAMAROCK_* environment variables (--some-flag is LLAMAROCK_SOME_FLAG), then the "
        "--config file, then the defaults. docs/configuration.md describes every setting.\n\n"
        f"Config file and environment only (tables and lists of tables): {', '.join(file_only_fields())}.\n\n"
        f"Secrets have no flag, so that they never show in the process list; set them in the environment or the "
        f"config file: {', '.join(secret_fields())}."
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings from the command's flags (those given), the environment, the config file and the defaults."""
    names: Sequence[str] = getattr(args, _SETTINGS_FIELDS, ())
    overrides = {name: getattr(args, name, None) for name in names}
    try:
        return load_settings(args.config, **overrides)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None


class Formatter(argparse.HelpFormatter):
    """Help wrapped to the terminal without breaking at hyphens; descriptions and epilogs keep their paragraphs."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 34,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = [" ".join(paragraph.split()) for paragraph in text.split("\n\n")]
        return "\n\n".join(
            textwrap.fill(paragraph, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
            for paragraph in paragraphs if paragraph
        )


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit 2), like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def subcommands(parser: argparse.ArgumentParser, dest: str, title: str) -> Commands:
    return parser.add_subparsers(dest=dest, required=True, title=title, metavar="COMMAND")


def add_command(commands: Commands, name: str, summary: str, description: str | None = None,
                run: Callable[[argparse.Namespace], int] | None = None) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` is its line in the parent's help, ``description`` (default: the summary) its own."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description or summary, formatter_class=Formatter
    )
    if run is not None:
        parser.set_defaults(run=run)
    return parser

