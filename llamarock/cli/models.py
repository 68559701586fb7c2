"""``llamarock models [--json]``: the catalog's model ids and the deployment that serves each (embedding model ids:
their embedding deployment)."""

from __future__ import annotations

import argparse
import json

from llamarock.bedrock import catalog
from llamarock.cli import flags
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.embeddings import EmbeddingService

SUMMARY = "list catalog model ids and the deployment serving each"


def register(commands: flags.Commands) -> None:
    parser = flags.add_command(commands, "models", SUMMARY, run=run)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    flags.add_common_flags(parser)


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(args)
    registry = DeploymentRegistry(settings)
    embeddings = EmbeddingService(settings)
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
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(str(r["modelId"])) for r in rows)
    dep_width = max(len(str(r["deployment"] or "-")) for r in rows)
    print(f"{'MODEL ID':<{width}}  {'DEPLOYMENT':<{dep_width}}  ENGINE    WEIGHTS")
    for r in rows:
        print(f"{r['modelId']:<{width}}  {r['deployment'] or '-':<{dep_width}}  {r['engine'] or '-':<8}  "
              f"{r['weights'] or 'not served'}")
    return 0
