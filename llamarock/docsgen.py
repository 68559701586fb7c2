"""Generated documentation: ``docs/configuration.md`` from the settings tree, ``docs/api-coverage.md`` from the
routes. Run ``python -m llamarock.docsgen`` to rewrite both; a test fails when either is stale."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from llamarock.bedrock import compat
from llamarock.codec.service_model import service_model
from llamarock.context import AGENT, AGENT_RUNTIME, BEDROCK, RUNTIME, S3
from llamarock.routes.operations import OperationTable
from llamarock.settings import DeploymentSettings, PriceSettings, RemoteEndpointSettings, RouterSettings, Settings

ROOT = Path(__file__).resolve().parents[1]


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = "computed"
        else:
            default = f"`{field.default!r}`"
        env = f"`LLAMAROCK_{name.upper()}`" if prefix == "" else ""
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {env} | {default} | {description} |")
    return rows


def configuration_markdown() -> str:
    lines = [
        "# Configuration",
        "",
        "Generated from `llamarock/settings.py` by `python -m llamarock.docsgen`; do not edit by hand.",
        "Priority: CLI flags, then environment variables, then the TOML file given by `--config` / `LLAMAROCK_CONFIG`,",
        "then the defaults.",
        "",
        "| Setting | Environment | Default | Description |",
        "|---|---|---|---|",
        *_rows(Settings, ""),
        "",
        "## `[[deployments]]` entries",
        "",
        "| Setting | Environment | Default | Description |",
        "|---|---|---|---|",
        *_rows(DeploymentSettings, "deployments[]."),
        *_rows(RemoteEndpointSettings, "deployments[].endpoints[]."),
        *_rows(RouterSettings, "deployments[].router."),
        "",
        "## `[prices.\"<model-id>\"]` entries",
        "",
        "| Setting | Environment | Default | Description |",
        "|---|---|---|---|",
        *_rows(PriceSettings, "prices.<model-id>."),
        "",
    ]
    return "\n".join(lines)


def _handler_name(row: object) -> str:
    handler = getattr(row, "handler", None)
    return getattr(handler, "__name__", "-")


def api_coverage_markdown() -> str:
    table = OperationTable()
    lines = [
        "# API coverage",
        "",
        "Generated from the operation table (`llamarock/routes/operations.py`) by `python -m llamarock.docsgen`; do "
        "not edit by hand. Operations without a handler answer UnknownOperationException naming the operation.",
    ]
    for service, heading in ((RUNTIME, "bedrock-runtime"), (BEDROCK, "bedrock (control plane)"),
                             (AGENT, "bedrock-agent (knowledge bases; docs/knowledge-bases.md)"),
                             (AGENT_RUNTIME, "bedrock-agent-runtime (retrieval; docs/knowledge-bases.md)")):
        implemented = table.implemented(service)
        lines += ["", f"## {heading}", "", "| Operation | Status | IAM action | Handler |", "|---|---|---|---|"]
        for operation in service_model(service).operation_names:
            row = implemented.get(operation)
            if row is None:
                lines.append(f"| {operation} | not implemented | - | - |")
            else:
                lines.append(f"| {operation} | implemented | `{row.action}` | `{_handler_name(row)}` |")
    lines += ["", "## s3 (the local blob store, docs/s3.md)", "",
              "The other operations of botocore's `s3` model answer S3's NotImplemented (501).", "",
              "| Operation | IAM action | Handler |", "|---|---|---|"]
    for operation, row in sorted(table.implemented(S3).items()):
        action = f"`{row.action}`" if row.action else "per object, by the handler (docs/s3.md)"
        lines.append(f"| {operation} | {action} | `{_handler_name(row)}` |")
    lines += ["", "## llamarock's own endpoints", "", "| Operation | Route | IAM action | Handler |",
              "|---|---|---|---|"]
    for row in table.rows:
        if row.route is not None:
            action = f"`{row.action}`" if row.action else ("none (public)" if row.public else "none (any caller)")
            lines.append(f"| {row.name} | `{row.route[0]} {row.route[1]}` | {action} | `{_handler_name(row)}` |")
    lines.append("")
    return "\n".join(lines)


GENERATED = {"docs/configuration.md": configuration_markdown, "docs/api-coverage.md": api_coverage_markdown,
             "docs/compat.md": compat.markdown}


def main() -> None:
    for relative, render in GENERATED.items():
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
        print(f"wrote {relative}")


if __name__ == "__main__":
    main()
