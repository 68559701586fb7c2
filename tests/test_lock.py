"""requirements/lock.txt (see docs/installing.md): it pins everything pyproject.toml asks for within pyproject's
ranges, and the running interpreter has the locked versions of the packages the generated docs and the server
depend on (docs/api-coverage.md comes from botocore's service models)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def _lock() -> dict[NormalizedName, Requirement]:
    pins: dict[NormalizedName, Requirement] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"the lock holds pins only, not pip options: {line!r}"
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = requirement
    return pins


def _pinned(requirement: Requirement) -> Version:
    """The exact version of a lock line, which has to be `name==version` and nothing else (a constraints file)."""
    (spec,) = requirement.specifier
    assert spec.operator == "==" and "*" not in spec.version, f"{requirement} is not an exact pin"
    assert not requirement.extras and requirement.marker is None and requirement.url is None, requirement
    return Version(spec.version)


def test_every_lock_line_is_an_exact_pin() -> None:
    pins = _lock()
    assert pins
    for requirement in pins.values():
        _pinned(requirement)
    # scripts/install upgrades pip with the lock as constraints: without a pin that would be any pip.
    assert "pip" in pins


@pytest.mark.parametrize("declared", _declared(), ids=str)
def test_declared_requirement_is_pinned_within_its_range(declared: Requirement) -> None:
    pins = _lock()
    name = canonicalize_name(declared.name)
    assert name in pins, f"{declared.name} is not in {LOCK.relative_to(ROOT)}: run scripts/lock"
    version = _pinned(pins[name])
    assert declared.specifier.contains(version, prereleases=True), (
        f"the lock pins {name}=={version}, outside pyproject.toml's {declared}: run scripts/lock"
    )
    # --strip-extras pins an extra's own dependencies as packages of their own (moto[server] -> flask, ...).
    for extra in sorted(declared.extras):
        for line in metadata.requires(declared.name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in pins, f"{declared.name}[{extra}] needs {requirement}"


@pytest.mark.parametrize("package", ["botocore", "starlette", "llama-cpp-python", "uvicorn", "pydantic"])
def test_installed_version_is_the_locked_one(package: str) -> None:
    locked = _pinned(_lock()[canonicalize_name(package)])
    installed = Version(metadata.version(package))
    assert installed == locked, f"{package} {installed} is installed but the lock pins {locked}: run scripts/install"
