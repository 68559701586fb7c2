"""``llamarock models [--json]``: the catalog's model ids and the deployment that serves each (embedding model ids:
their embedding deployment). ``llamarock models make-tiny FAMILY DIR``: a tiny random-weight vision model for tests
and CI, and the ``[[deployments]]`` TOML that serves it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from llamarock.bedrock import catalog
from llamarock.cli import flags
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.tiny_models import FAMILIES, build, deployment_toml

SUMMARY = "list catalog model ids and the deployment serving each"


def register(commands: flags.Commands) -> None:
    parser = flags.add_command(commands, "models", SUMMARY, run=run)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    flags.add_common_flags(parser)
    actions = parser.add_subparsers(dest="models_command", required=False, title="models commands",
                                    metavar="COMMAND")
    tiny = flags.add_command(
        actions, "make-tiny", "build a tiny random-weight vision model and print the TOML that serves it",
        "Build a tiny random-weight model of a vision family (a few hundred kB, about a second on a CPU, nothing "
        "downloaded; needs llamarock[vision]) in DIR, and print the [[deployments]] entry that serves it for the "
        "family's catalog ids. Its answers are noise, but they change with the image.", run=make_tiny)
    tiny.add_argument("family", metavar="FAMILY", help=f"one of: {', '.join(FAMILIES)}")
    tiny.add_argument("directory", metavar="DIR", type=Path, help="a new or empty folder for the model")


def make_tiny(args: argparse.Namespace) -> int:
    model = build(args.family, args.directory)
    print(f"# {model.architecture}, {model.parameters:,} parameters, {model.bytes_on_disk:,} bytes in "
          f"{model.directory}", file=sys.stderr)
    print(deployment_toml(model), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(args)
    registry = DeploymentRegistry(settings)
    embeddings = EmbeddingService(settings)
    # Remote deployments' replicas are asked what they offer (context, chat format, images, tools, tokenizer).
    probed = {d.name: asyncio.run(d.probe()) for d in registry.deployments if d.capabilities is not None}
    rows = []
    for model in catalog.MODELS:
        deployment = (embeddings.for_model(model.model_id) if model.is_embedding
                      else registry.for_model(model.model_id))
        rows.append({
            "modelId": model.model_id,
            "name": model.name,
            "deployment": deployment.name if deployment else None,
            "engine": deployment.engine_name if deployment else None,
            "weights": deployment.weights if deployment else None,
            **({"capabilities": probed[deployment.name]} if deployment and deployment.name in probed else {}),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(str(r["modelId"])) for r in rows)
    dep_width = max(len(str(r["deployment"] or "-")) for r in rows)
    print(f"{'MODEL ID':<{width}}  {'DEPLOYMENT':<{dep_width}}  ENGINE    WEIGHTS")
    for r in rows:
        print(f"{r['modelId']:<{width}}  {r['deployment'] or '-':<{dep_width}}  {r['engine'] or '-':<8}  "
              f"{r['weights'] or 'not served'}{_capabilities(r.get('capabilities'))}")
    return 0


def _capabilities(caps: object) -> str:
    """A remote deployment's probed capabilities, as a table cell's tail."""
    if not isinstance(caps, dict):
        return ""
    if "error" in caps:
        return f"  (unreachable: {caps['error']})"
    return (f"  (context {caps.get('context_length')}, {caps.get('chat_format')}, images "
            f"{'yes' if caps.get('images') else 'no'}, tools {caps.get('tools')}, tokenizer {caps.get('tokenizer')})")
