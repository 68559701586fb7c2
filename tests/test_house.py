"""House rules: documented settings, fresh generated docs, the layers' import direction, ruff and mypy clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from llamarock import docsgen
from llamarock.settings import DeploymentSettings, PriceSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llamarock"


@pytest.mark.parametrize("model", [Settings, DeploymentSettings, PriceSettings])
def test_every_setting_is_documented(model: type[BaseModel]) -> None:
    undocumented = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert undocumented == []


@pytest.mark.parametrize("relative", sorted(docsgen.GENERATED))
def test_generated_docs_are_fresh(relative: str) -> None:
    expected = docsgen.GENERATED[relative]()
    actual = (ROOT / relative).read_text()
    assert actual == expected, f"{relative} is stale: run `python -m llamarock.docsgen`"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("llamarock")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# layer (a package, or a module at the package root) -> the llamarock layers it may import; types, errors and
# settings are open to all. Every layer must be listed, so a new package states its place in the picture.
ALLOWED = {
    "codec": {"codec"},
    "bedrock": {"bedrock"},
    "engines": {"engines"},
    "budget": set(),
    "context": {"bedrock"},
    "storage": {"storage"},
    "knowledge": {"knowledge", "engines"},
    "scheduler": {"budget"},
    "services": {"services", "bedrock", "codec", "context", "engines", "scheduler", "storage", "jobs", "knowledge",
                 "guardrails", "modelfiles", "training"},
    "modelfiles": {"modelfiles"},
    "training": {"training"},
    "guardrails": {"guardrails"},
    "observability": {"observability", "bedrock", "context", "services", "storage"},
    "auth": {"auth", "bedrock", "budget", "context", "observability", "storage"},
    "routes": {"routes", "auth", "bedrock", "codec", "context", "observability", "services"},
    "app": {"auth", "observability", "routes", "scheduler", "services", "storage"},
    "cli": {"cli", "app", "auth", "bedrock", "observability", "services", "storage", "modelfiles"},
    "docsgen": {"bedrock", "codec", "context", "routes"},
    "__main__": {"cli"},
    "__init__": set(),
    "types": set(),
    "errors": set(),
    "settings": set(),
}
OPEN = {"types", "errors", "settings"}


def test_import_direction() -> None:
    violations = []
    for path in PACKAGE.rglob("*.py"):
        layer = _layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert layer in ALLOWED, f"{path.relative_to(ROOT)}: add its layer {layer!r} to ALLOWED"
        for module in _imports(path):
            target = _layer(module)
            if target and target != layer and target not in OPEN and target not in ALLOWED[layer]:
                violations.append(f"{path.relative_to(ROOT)} imports {module}")
    assert violations == []


def test_engines_import_no_aws_libraries() -> None:
    for path in (PACKAGE / "engines").glob("*.py"):
        modules = ast.parse(path.read_text())
        names = {
            alias.name for node in ast.walk(modules) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module or "" for node in ast.walk(modules) if isinstance(node, ast.ImportFrom)}
        assert not {n for n in names if n.startswith(("botocore", "boto3", "starlette"))}, path


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is part of the test extras"
    result = subprocess.run([ruff, "check", "llamarock", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
