"""The one settings tree.

Values come, highest priority first, from CLI flags, ``LLAMAROCK_*`` environment variables (nested fields with
``__``, e.g. ``LLAMAROCK_LOG_LEVEL``), the TOML config file (``--config`` / ``LLAMAROCK_CONFIG``) and the defaults
below. Every field carries a description; ``docs/configuration.md`` is generated from them.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

EngineName = Literal["llamacpp", "fake"]

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("llamarock_config_file", default=None)


def default_data_dir() -> Path:
    """Per-user data directory: ``$XDG_DATA_HOME/llamarock``, else ``~/.local/share/llamarock``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llamarock"


class DeploymentSettings(BaseModel):
    """One ``[[deployments]]`` entry: which model ids an engine serves, and with which weights."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name of the deployment; sent back in the x-llamarock-served-by header.")
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Catalog model ids this deployment serves; shell-style patterns allowed ('*' = every id "
        "not claimed by an earlier deployment).",
    )
    engine: EngineName | None = Field(
        default=None, description="Engine that runs this deployment; empty means the top-level `engine` setting."
    )
    model_path: Path | None = Field(
        default=None,
        description="Path of a GGUF file for the llamacpp engine; empty means the embedded SmolLM2-135M-Instruct.",
    )
    context_length: int | None = Field(
        default=None, ge=64, description="Context window in tokens; empty means min(model's trained context, 8192)."
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for this deployment; empty means the top-level `threads`."
    )
    chat_format: str = Field(
        default="auto",
        description="Chat format of the weights: 'auto' (from the GGUF chat template), 'llama3', 'llama2' or "
        "'other'. Llama-formatted prompts pass through unchanged only when it matches the prompt's format.",
    )
    kv_cells: int | None = Field(
        default=None, ge=64,
        description="llama.cpp KV cache size in tokens, shared by all running requests of this deployment; empty "
        "means the context window. Admission reserves prompt + max tokens per request from it.",
    )
    max_parallel: int = Field(
        default=8, ge=1, le=128, description="Requests decoded together in each step (continuous batching)."
    )
    max_queue: int = Field(
        default=64, ge=0, description="Requests that may wait for a slot; beyond it callers get ThrottlingException."
    )
    queue_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds a request may wait for a slot before ModelTimeoutException."
    )
    prefill_chunk: int = Field(
        default=256, ge=16, le=512,
        description="Prompt tokens prefilled per step while other requests are decoding, so that a long prompt "
        "never stalls running streams for more than one step.",
    )
    fake_reply: str | None = Field(
        default=None,
        description="Fake engine only: the reply to generate; '{prompt}' is replaced by the last user message. "
        "Empty means a deterministic sentence that quotes the prompt.",
    )
    fake_fail_after: int | None = Field(
        default=None, ge=0, description="Fake engine only: fail with an engine error after this many tokens."
    )
    fake_token_delay_ms: int = Field(default=0, ge=0, description="Fake engine only: delay before each token.")


class Settings(BaseSettings):
    """Everything `llamarock serve` and the CLI can be told."""

    model_config = SettingsConfigDict(env_prefix="LLAMAROCK_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port the server listens on (0 = any free port).")
    region: str = Field(default="us-west-2", description="AWS region the server answers as.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the metadata database, logs and blobs (env LLAMAROCK_DATA_DIR).",
    )
    engine: EngineName = Field(
        default="llamacpp", description="Engine for deployments that do not name one: 'llamacpp' or 'fake'."
    )
    threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1), ge=1, description="Default CPU threads per deployment."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log verbosity.")
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Extra model names clients may use, each mapped to a catalog model id."
    )
    deployments: list[DeploymentSettings] = Field(
        default_factory=list,
        description="Model deployments, first match wins; empty means one deployment of the embedded SmolLM2 "
        "serving every catalog id.",
    )
    auth: Literal["dev", "enforce"] = Field(
        default="dev",
        description="'dev' (loopback addresses only): unsigned requests and unknown keys act as a `dev` principal "
        "that may do anything; 'enforce': every request needs a key from `llamarock keys create`, and its policy "
        "and quotas apply.",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate file: serve HTTPS (botocore sends bearer tokens only over HTTPS)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key file for `tls_cert`.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database (keys, principals); empty means SQLite at "
        "<data_dir>/llamarock.db. Secrets in it are encrypted with <data_dir>/secret.key.",
    )
    account_id: str = Field(
        default="000000000000",
        pattern=r"^\d{12}$",
        description="AWS account id the server answers as: in principal ARNs (arn:aws:iam::<account>:user/<name>) "
        "and inference-profile ARNs.",
    )
    default_rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute per principal and model; empty means unlimited. "
        "`keys create --rpm` overrides it for one principal.",
    )
    default_tpm: int | None = Field(
        default=None, ge=1, description="Tokens (prompt + generated) per minute per principal and model; empty "
        "means unlimited. `keys create --tpm` overrides it for one principal.",
    )
    clock_skew_seconds: int = Field(
        default=300, ge=1, description="How far a SigV4 timestamp may be from the server's clock, in seconds."
    )
    audit_log_max_bytes: int = Field(
        default=10_000_000, ge=1024, description="Size at which <data_dir>/logs/audit.jsonl is rotated."
    )
    audit_log_backups: int = Field(default=5, ge=0, description="Rotated audit log files to keep.")

    @field_validator("deployments")
    @classmethod
    def _unique_names(cls, value: list[DeploymentSettings]) -> list[DeploymentSettings]:
        names = [d.name for d in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def effective_deployments(self) -> list[DeploymentSettings]:
        """The configured deployments, or the embedded default when none is configured."""
        if self.deployments:
            return list(self.deployments)
        return [DeploymentSettings(name="smollm2-135m-embedded", models=["*"])]


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``, None values ignored), environment and config file."""
    path = config_file or os.environ.get("LLAMAROCK_CONFIG")
    token = _CONFIG_FILE.set(Path(path) if path else None)
    try:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_FILE.reset(token)
