"""The `llamarock` command line: settings flags generated from the settings tree, their priority over the
environment and the config file, one-line errors (exit 2, no traceback) and readable help."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llamarock.cli import build_parser, flags, main
from llamarock.errors import CliError, LlamarockError
from llamarock.settings import Settings

SUBCOMMANDS = [["models"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"], ["usage"], ["quotas"]]
COMMON = ["--config", "--data-dir", "--database-url", "--engine"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("LLAMAROCK_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


def _flagged(annotation: Any) -> bool:
    """Whether a setting should have a flag: anything but dicts and lists of tables (secrets aside)."""
    if typing.get_origin(annotation) is dict:
        return False
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return not (isinstance(item, type) and issubclass(item, BaseModel))
    return True


def _options(parser_help: str) -> set[str]:
    return {word.rstrip(",") for word in parser_help.split() if word.startswith("--")}


def test_every_scalar_setting_is_a_serve_flag_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "serve")
    options = _options(text)
    expected = [name for name, field in Settings.model_fields.items()
                if _flagged(field.annotation) and "secret" not in name]
    assert len(expected) > 25
    for name in expected:
        option = "--" + name.replace("_", "-")
        assert option in options, option
        description = Settings.model_fields[name].description
        assert description and _squeezed(description) in _squeezed(text), name
    for name in ("host", "port", "region", "regions", "log_level", "log_format", "auth", "tls_cert", "tls_key",
                 "data_dir", "engine", "database_url"):
        assert name in expected
    # every settings flag defaults to None, so the environment and the config file keep their say
    args = build_parser().parse_args(["serve"])
    assert all(getattr(args, name) is None for name in expected)
    assert args.config is None


def test_help_shows_defaults_choices_and_groups(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = _help(capsys, "serve")
    assert "Default: 8080." in text and "Default: 127.0.0.1." in text
    assert f"Default: {tmp_path / 'xdg' / 'llamarock'}." in text  # the data dir's default factory, computed
    assert "--auth {dev,enforce}" in text and "--log-format {text,json}" in text
    assert "--engine {llamacpp,fake,transformers,openai,llama-server}" in text
    for group in ("server:", "auth and quotas:", "regions:", "storage:", "logging:"):
        assert f"\n{group}\n" in text
    for name in flags.file_only_fields():
        assert name in text
        assert "--" + name.replace("_", "-") not in _options(text)
    assert set(flags.file_only_fields()) == {
        "deployments", "embedding_deployments", "prices", "aliases", "model_regions", "on_demand_regions",
        "region_servers", "tier_price_multipliers", "knowledge_rds_urls"}
    assert max(len(line) for line in text.splitlines()) <= 200


def test_every_group_names_a_flagged_setting() -> None:
    specs = flags.flag_specs()
    grouped = [name for names in flags.SERVE_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(set(grouped))
    assert set(grouped) <= set(specs)
    assert set(flags.COMMON_FIELDS) <= set(specs)


def test_secrets_have_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    secrets = [name for name in Settings.model_fields if "secret" in name]
    assert secrets == ["peer_secret_access_key", "blob_store_secret_access_key"]
    text = _help(capsys, "serve")
    for name in secrets:
        option = "--" + name.replace("_", "-")
        assert option not in text
        assert name in text  # the epilog says where they go instead
        assert main(["serve", option, "s3cr3t"]) == 2
        error = capsys.readouterr().err
        assert "unrecognized arguments" in error and len(error.splitlines()) == 1


def test_a_flag_beats_the_environment_which_beats_the_config_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('host = "10.0.0.1"\nport = 9000\nlog_level = "debug"\n')
    # `serve --auth dev` refuses a non-loopback address before it loads anything, naming the address it would use
    assert main(["serve", "--config", str(config)]) == 2
    assert "refusing to listen on 10.0.0.1 with --auth dev" in capsys.readouterr().err
    monkeypatch.setenv("LLAMAROCK_HOST", "10.0.0.2")
    assert main(["serve", "--config", str(config)]) == 2
    assert "refusing to listen on 10.0.0.2 " in capsys.readouterr().err
    assert main(["serve", "--config", str(config), "--host", "10.0.0.3"]) == 2
    assert "refusing to listen on 10.0.0.3 " in capsys.readouterr().err

    monkeypatch.setenv("LLAMAROCK_PORT", "9100")
    monkeypatch.setenv("LLAMAROCK_CONFIG", str(config))
    args = build_parser().parse_args(["serve", "--port", "9200"])
    settings = flags.settings_from(args)
    assert (settings.port, settings.log_level, settings.host) == (9200, "debug", "10.0.0.2")
    assert flags.settings_from(build_parser().parse_args(["serve"])).port == 9100
    monkeypatch.delenv("LLAMAROCK_PORT")
    assert flags.settings_from(build_parser().parse_args(["models"])).port == 9000


def test_regions_are_comma_separated() -> None:
    args = build_parser().parse_args(["serve", "--regions", "us-east-1, eu-west-1"])
    assert args.regions == ["us-east-1", "eu-west-1"]
    settings = flags.settings_from(args)
    assert settings.regions == ["us-east-1", "eu-west-1"] and settings.region == "us-east-1"


def test_flags_are_validated_by_the_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "serve", "--port", "0", "--threads", "3", "--peer-timeout-s", "1.5", "--cache-read-price-fraction", "0.25",
        "--tls-cert", "c.pem", "--data-dir", str(tmp_path), "--default-rpm", "7",
    ])
    settings = flags.settings_from(args)
    assert (settings.port, settings.threads, settings.peer_timeout_s) == (0, 3, 1.5)
    assert str(settings.cache_read_price_fraction) == "0.25" and settings.tls_cert == Path("c.pem")
    assert settings.data_dir == tmp_path and settings.default_rpm == 7


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--port", "70000"], "llamarock: configuration error: port: Input should be less than or equal to 65535"),
    (["serve", "--port", "many"], "llamarock: configuration error: port: Input should be a valid integer"),
    (["serve", "--auth", "nope"], "llamarock serve: argument --auth: invalid choice: 'nope'"),
    (["serve", "--regions", "mars"], "llamarock: configuration error: regions[0]: String should match pattern"),
    (["models", "--config", "/nonexistent/llamarock.toml"],
     "llamarock: configuration error: config file not found: /nonexistent/llamarock.toml"),
    (["serve", "--tls-cert", "cert.pem"], "llamarock: --tls-cert and --tls-key go together"),
    (["serve", "--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"],
     "llamarock: TLS file not found: /nonexistent/c.pem"),
    (["serve", "--host", "0.0.0.0"], "llamarock: refusing to listen on 0.0.0.0 with --auth dev"),
    (["serve", "--regions", "us-east-1", "--region", "us-west-2"],
     "llamarock: configuration error: region us-west-2 (the region of unsigned and bearer-token requests) must be "
     "one of regions (us-east-1)"),
    ([], "llamarock: the following arguments are required: COMMAND"),
])
def test_bad_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message), captured.err
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err


def test_each_validation_error_is_a_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('prot = 1\n[[deployments]]\nname = "a"\nthreads = 0\n')
    assert main(["serve", "--config", str(config), "--port", "-1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == sorted([
        "llamarock: configuration error: port: Input should be greater than or equal to 0",
        "llamarock: configuration error: deployments[0].threads: Input should be greater than or equal to 1",
        "llamarock: configuration error: prot: Extra inputs are not permitted",
    ])


def test_a_real_process_prints_one_line_without_a_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")}
    for argv in (["serve", "--port", "70000"], ["serve", "--auth", "nope"]):
        result = subprocess.run([sys.executable, "-m", "llamarock", *argv], capture_output=True, text=True,
                                timeout=60, env=env)
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    for command in ("serve", "models", "keys", "usage", "quotas"):
        assert f"\n    {command} " in text
    assert "llamarock serve --help" in text


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_subcommand_help_names_its_flags_and_the_common_settings(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    text = _help(capsys, *command)
    options = _options(text)
    assert set(COMMON) <= options
    assert "--port" not in options and "--host" not in options
    own = {
        "models": {"--json"},
        "keys create": {"--principal", "--policy", "--rpm", "--tpm", "--bearer", "--json"},
        "keys list": {"--json"},
        "keys revoke": set(),
        "usage": {"--by", "--since", "--json", "--provisioned"},
        "quotas": {"--endpoint", "--json"},
    }[" ".join(command)]
    assert options - {"--help"} == own | set(COMMON)


def test_keys_help_lists_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "keys")
    assert all(f"\n    {name} " in text for name in ("create", "list", "revoke"))


def test_one_cli_error_type() -> None:
    for command in ("keys", "usage", "quotas"):  # the old top-level modules
        assert importlib.util.find_spec(f"llamarock.cli_{command}") is None
    import llamarock.cli.keys
    import llamarock.cli.models
    import llamarock.cli.quotas
    import llamarock.cli.serve
    import llamarock.cli.usage

    modules = [llamarock.cli, llamarock.cli.flags, llamarock.cli.keys, llamarock.cli.models, llamarock.cli.quotas,
               llamarock.cli.serve, llamarock.cli.usage]
    for module in modules:
        for old in ("ServeError", "KeysError", "UsageError", "QuotasError"):
            assert not hasattr(module, old)
        assert not [name for name, value in vars(module).items()
                    if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == module.__name__]
    assert issubclass(CliError, LlamarockError)


def test_keys_commands_fail_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["keys", "create", "--principal", "alice", "--json", *data]) == 0
    key = json.loads(capsys.readouterr().out)
    assert main(["keys", "create", "--principal", "bob", "--rpm", "0", *data]) == 2
    assert capsys.readouterr().err == "llamarock: --rpm must be at least 1\n"
    policy = tmp_path / "policy.json"
    policy.write_text("{not json")
    assert main(["keys", "create", "--principal", "bob", "--policy", str(policy), *data]) == 2
    assert capsys.readouterr().err.startswith(f"llamarock: policy file {policy} is not JSON")
    assert main(["keys", "revoke", key["accessKeyId"], *data]) == 0
    assert main(["keys", "revoke", "AKIANOSUCHKEY", *data]) == 2
    assert capsys.readouterr().err == "llamarock: no key AKIANOSUCHKEY\n"


class _Recorder(BaseHTTPRequestHandler):
    seen: typing.ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        body = json.dumps({"defaults": {"rpmLimit": None, "tpmLimit": None}, "quotas": [], "provisioned": []})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_quotas_signs_its_request_for_the_settings_region(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, recorder: str
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["quotas", "--endpoint", recorder, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quotas"] == []
    assert "authorization" not in _Recorder.seen[-1]  # no credentials: unsigned
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("LLAMAROCK_REGION", "eu-west-1")
    assert main(["quotas", "--endpoint", recorder]) == 0
    assert "Default quotas per principal and model: rpm unlimited" in capsys.readouterr().out
    seen = _Recorder.seen[-1]
    assert seen["path"] == "/llamarock/quotas"
    assert seen["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/bedrock/aws4_request" in seen["authorization"] and "x-amz-date" in seen
