"""``llamarock models make-tiny``: build a tiny random-weight vision model and the ``[[deployments]]`` entry that
serves it for its family's catalog ids (the builder itself is :mod:`llamarock.engines.tiny_vision`)."""

from __future__ import annotations

import json
from pathlib import Path

from llamarock.engines.tiny_vision import CATALOG_IDS, FAMILIES, TinyModel, make_tiny
from llamarock.engines.transformers import torch_available
from llamarock.errors import CliError

__all__ = ["FAMILIES", "build", "deployment_toml"]


def deployment_toml(model: TinyModel) -> str:
    """The ``[[deployments]]`` entry that serves ``model`` for its family's catalog ids."""
    name = "tiny-" + model.family.replace(".", "-")
    models = ", ".join(json.dumps(i) for i in CATALOG_IDS[model.family])
    return (
        "[[deployments]]\n"
        f"name = {json.dumps(name)}\n"
        'engine = "transformers"\n'
        f"model_path = {json.dumps(str(model.directory.resolve()))}\n"
        f"models = [{models}]\n"
    )


def build(family: str, directory: Path) -> TinyModel:
    """Build the tiny model, or a CliError saying what is missing or wrong."""
    if family not in FAMILIES:
        raise CliError(f"unknown family {family!r}: make-tiny builds {', '.join(FAMILIES)}")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise CliError(f"{directory} is not an empty folder; give a new or empty folder for the model")
    if not torch_available():
        raise CliError("make-tiny needs torch and transformers: install llamarock[vision]")
    try:
        return make_tiny(family, directory)
    except ValueError as exc:
        raise CliError(str(exc)) from None
