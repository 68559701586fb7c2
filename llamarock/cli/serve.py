"""``llamarock serve``: run the Bedrock-compatible server; every setting that can be a flag is one."""

from __future__ import annotations

import argparse
import ipaddress
import logging

from llamarock.cli import flags
from llamarock.errors import CliError
from llamarock.settings import Settings

SUMMARY = "run the Bedrock-compatible server"
DESCRIPTION = (
    "Run the Bedrock-compatible server (bedrock-runtime and the bedrock control plane) on the configured "
    "deployments. Every setting below is also an environment variable and a config-file key."
)


def register(commands: flags.Commands) -> None:
    parser = flags.add_command(commands, "serve", SUMMARY, DESCRIPTION, run)
    parser.usage = "%(prog)s [-h] [--config FILE] [--SETTING VALUE ...]"
    parser.epilog = flags.settings_epilog()
    flags.add_every_settings_flag(parser)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serving(settings: Settings) -> None:
    """Refuse settings that would start an open or broken server; CliError says why and what to do."""
    if settings.auth == "dev" and not is_loopback(settings.host):
        raise CliError(
            f"refusing to listen on {settings.host} with --auth dev, which lets anyone in: use --auth enforce (and "
            "keys from `llamarock keys create`) on a non-loopback address, or listen on 127.0.0.1."
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together: give both, or neither.")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise CliError(f"TLS file not found: {path}")


def run(args: argparse.Namespace) -> int:
    settings = flags.settings_from(args)
    check_serving(settings)

    from llamarock.app import create_app
    from llamarock.cli import http_protocol
    from llamarock.observability import logs

    logs.configure(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    for deployment in app.state.registry.deployments:
        logging.getLogger("llamarock").info(
            "deployment %s: engine=%s weights=%s serves %s", deployment.name, deployment.engine_name,
            deployment.weights, ", ".join(deployment.model_ids) or "no catalog model",
        )
    logging.getLogger("llamarock").info("auth mode %s%s", settings.auth, " over HTTPS" if settings.tls_cert else "")
    http_protocol.serve(app, settings)
    return 0
