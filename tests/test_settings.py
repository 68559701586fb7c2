"""The settings tree: flags over environment over the TOML file over defaults; bad config is refused clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llamarock.bedrock import catalog
from llamarock.settings import load_settings


def test_priority_flags_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('region = "eu-west-1"\nport = 9000\nlog_level = "debug"\n')
    monkeypatch.setenv("LLAMAROCK_PORT", "9100")
    settings = load_settings(config, port=9200)
    assert (settings.region, settings.port, settings.log_level) == ("eu-west-1", 9200, "debug")
    assert load_settings(config).port == 9100


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAROCK_DATA_DIR", str(tmp_path / "d"))
    assert load_settings().data_dir == tmp_path / "d"


def test_default_data_dir_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLAMAROCK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_settings().data_dir == tmp_path / "llamarock"


def test_config_file_deployments(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[deployments]]\nname = "a"\nengine = "fake"\nmodels = ["meta.llama3-1-*"]\n'
                      '[[deployments]]\nname = "b"\nmodels = ["*"]\n')
    settings = load_settings(config)
    assert [d.name for d in settings.effective_deployments()] == ["a", "b"]
    assert settings.deployments[0].engine == "fake"


def test_embedded_default_when_no_deployment() -> None:
    deployments = load_settings().effective_deployments()
    assert len(deployments) == 1 and deployments[0].models == ["*"] and deployments[0].model_path is None


def test_unknown_keys_and_duplicate_names_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('prot = 1\n')
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)
    config.write_text('[[deployments]]\nname = "a"\n[[deployments]]\nname = "a"\n')
    with pytest.raises(ValidationError, match="repeated: a"):
        load_settings(config)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llamarock", *args], capture_output=True, text=True, env=env)


def test_models_command_lists_every_id_and_its_deployment() -> None:
    result = _cli("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The spec's 12 models, Llama 4 Scout and Maverick, and the 4 embedding models (Titan V2 and G1, Cohere v3).
    assert len(lines) == 1 + len(catalog.MODELS) == 19
    llama = [line for line in lines[1:] if line.startswith("meta.")]
    assert len(llama) == 14
    assert all("smollm2-135m-embedded" in line and "SmolLM2-135M-Instruct.Q4_1.gguf" in line for line in llama)
    embedding = [line for line in lines[1:] if not line.startswith("meta.")]
    assert all("minilm-l6-embedded" in line and "all-MiniLM-L6-v2" in line for line in embedding), embedding


def test_models_command_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[deployments]]\nname = "x"\nmodels = ["meta.nothing-v1"]\n')
    result = _cli("models", "--config", str(config))
    assert result.returncode == 2
    assert "not in the catalog: meta.nothing-v1" in result.stderr
    config.write_text('[[deployments]]\nname = "x"\nmodel_path = "/nonexistent.gguf"\n')
    result = _cli("models", "--config", str(config))
    assert result.returncode == 2 and "GGUF file not found: /nonexistent.gguf" in result.stderr
