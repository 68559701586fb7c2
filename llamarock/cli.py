"""The ``llamarock`` command: ``serve`` and ``models``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llamarock.bedrock import catalog
from llamarock.services.deployments import DeploymentConfigError, DeploymentRegistry
from llamarock.settings import Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (env LLAMAROCK_CONFIG)")
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (env LLAMAROCK_DATA_DIR)")
    parser.add_argument("--engine", choices=["llamacpp", "fake"], help="engine for deployments that name none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamarock", description="Amazon Bedrock's Llama API, self-hosted.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the Bedrock-compatible server")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--region", help="AWS region to answer as (default us-west-2)")
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    _common(serve)
    models = commands.add_parser("models", help="list catalog model ids and the deployment serving each")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(models)
    return parser


def _settings(args: argparse.Namespace, *names: str) -> Settings:
    overrides = {name: getattr(args, name, None) for name in names}
    return load_settings(args.config, **overrides)


def _models(args: argparse.Namespace) -> int:
    settings = _settings(args, "data_dir", "engine")
    registry = DeploymentRegistry(settings)
    rows = []
    for model in catalog.MODELS:
        deployment = registry.for_model(model.model_id)
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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from llamarock.app import create_app

    settings = _settings(args, "host", "port", "region", "data_dir", "engine", "log_level")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    for deployment in app.state.registry.deployments:
        logging.getLogger("llamarock").info(
            "deployment %s: engine=%s weights=%s serves %s", deployment.name, deployment.engine_name,
            deployment.weights, ", ".join(deployment.model_ids) or "no catalog model",
        )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            return _models(args)
        return _serve(args)
    except (ValidationError, DeploymentConfigError, FileNotFoundError) as exc:
        print(f"llamarock: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
