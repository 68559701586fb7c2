"""The ``llamarock`` command: ``serve``, ``models``, ``keys``, ``usage`` and ``quotas``."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llamarock import cli_keys, cli_quotas, cli_usage
from llamarock.bedrock import catalog
from llamarock.observability import logs
from llamarock.services.deployments import DeploymentConfigError, DeploymentRegistry
from llamarock.settings import Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (env LLAMAROCK_CONFIG)")
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (env LLAMAROCK_DATA_DIR)")
    parser.add_argument("--engine", choices=["llamacpp", "fake"], help="engine for deployments that name none")


def _region_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamarock", description="Amazon Bedrock's Llama API, self-hosted.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the Bedrock-compatible server")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--region", help="region of unsigned and bearer-token requests (default us-west-2)")
    serve.add_argument("--regions", type=_region_list,
                       help="comma-separated regions to answer for, e.g. us-west-2,us-east-1 (default: every region)")
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", dest="log_format", choices=["text", "json"],
                       help="text (default) or json: one JSON object per log line, with the request id")
    serve.add_argument("--auth", choices=["dev", "enforce"],
                       help="dev (default; loopback only): unsigned requests allowed; enforce: keys required")
    serve.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", dest="tls_key", help="PEM private key for --tls-cert")
    _common(serve)
    models = commands.add_parser("models", help="list catalog model ids and the deployment serving each")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(models)
    cli_keys.register(commands, _common)
    cli_usage.register(commands, _common)
    cli_quotas.register(commands, _common)
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


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeError(Exception):
    """`serve` refuses to start; the message says why and what to do."""


def _check_serving(settings: Settings) -> None:
    if settings.auth == "dev" and not is_loopback(settings.host):
        raise ServeError(
            f"refusing to listen on {settings.host} with --auth dev, which lets anyone in: use --auth enforce (and "
            "keys from `llamarock keys create`) on a non-loopback address, or listen on 127.0.0.1."
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ServeError("--tls-cert and --tls-key go together: give both, or neither.")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ServeError(f"TLS file not found: {path}")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from llamarock.app import create_app

    settings = _settings(args, "host", "port", "region", "regions", "data_dir", "engine", "log_level", "log_format",
                         "auth", "tls_cert", "tls_key")
    _check_serving(settings)
    logs.configure(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    for deployment in app.state.registry.deployments:
        logging.getLogger("llamarock").info(
            "deployment %s: engine=%s weights=%s serves %s", deployment.name, deployment.engine_name,
            deployment.weights, ", ".join(deployment.model_ids) or "no catalog model",
        )
    logging.getLogger("llamarock").info("auth mode %s%s", settings.auth, " over HTTPS" if settings.tls_cert else "")
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False, log_config=None,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            return _models(args)
        if args.command == "keys":
            return cli_keys.run(args, _settings(args, "data_dir"))
        if args.command == "usage":
            return cli_usage.run(args, _settings(args, "data_dir"))
        if args.command == "quotas":
            return cli_quotas.run(args, _settings(args, "data_dir"))
        return _serve(args)
    except (ValidationError, DeploymentConfigError, FileNotFoundError) as exc:
        print(f"llamarock: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ServeError, cli_keys.KeysError, cli_usage.UsageError, cli_quotas.QuotasError) as exc:
        print(f"llamarock: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
