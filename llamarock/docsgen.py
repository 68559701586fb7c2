"""Generated documentation: ``docs/configuration.md`` from the settings tree, ``docs/api-coverage.md`` from the
routes. Run ``python -m llamarock.docsgen`` to rewrite both; a test fails when either is stale."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from llamarock.app import CONTROL_HANDLERS
from llamarock.codec.service_model import service_model
from llamarock.routes.runtime import OPERATIONS
from llamarock.settings import DeploymentSettings, PriceSettings, Settings

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
        "",
        "## `[prices.\"<model-id>\"]` entries",
        "",
        "| Setting | Environment | Default | Description |",
        "|---|---|---|---|",
        *_rows(PriceSettings, "prices.<model-id>."),
        "",
    ]
    return "\n".join(lines)


def api_coverage_markdown() -> str:
    implemented = {operation: handler.__name__ for operation, handler in OPERATIONS.values()}
    lines = [
        "# API coverage",
        "",
        "Generated from `llamarock/routes/` by `python -m llamarock.docsgen`; do not edit by hand.",
        "",
        "## bedrock-runtime",
        "",
        "| Operation | Status | Handler |",
        "|---|---|---|",
    ]
    for operation in service_model("bedrock-runtime").operation_names:
        handler = implemented.get(operation)
        if handler is None:
            status, shown = "not implemented (unknown route)", "-"
        elif handler == "not_implemented":
            status, shown = "not implemented (clear ValidationException)", "-"
        else:
            status, shown = "implemented", f"`{handler}`"
        lines.append(f"| {operation} | {status} | {shown} |")
    lines += [
        "",
        "## bedrock (control plane)",
        "",
        "Operations without a handler answer UnknownOperationException naming the operation.",
        "",
        "| Operation | Status | Handler |",
        "|---|---|---|",
    ]
    for operation in service_model("bedrock").operation_names:
        control = CONTROL_HANDLERS.get(operation)
        if control is None:
            lines.append(f"| {operation} | not implemented | - |")
        else:
            lines.append(f"| {operation} | implemented | `{control.__name__}` |")
    lines.append("")
    return "\n".join(lines)


GENERATED = {"docs/configuration.md": configuration_markdown, "docs/api-coverage.md": api_coverage_markdown}


def main() -> None:
    for relative, render in GENERATED.items():
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
        print(f"wrote {relative}")


if __name__ == "__main__":
    main()
