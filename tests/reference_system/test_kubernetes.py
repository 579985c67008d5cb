"""deploy/kubernetes: every manifest valid against the Kubernetes OpenAPI schemas (offline,
kubernetes-validate, strict: unknown fields are errors), and wired the way the services read
their configuration: a Deployment and a Service per service, probes on a declared port, the
ConfigMap holding every variable the services need."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from examples.food_delivery import runtime

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SERVICES = ("order", "menu", "pricing", "payment", "dispatch", "notification")
KUBERNETES = "1.37.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


@pytest.mark.parametrize(
    ("where", "doc"), documents(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_manifest_is_valid_against_the_schema(where: str, doc: dict[str, Any]) -> None:
    """Each object validates against Kubernetes' schema, unknown fields refused."""
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    """The check can fail: a misspelt field and a port given as text are errors."""
    doc = dict(documents()[0][1])
    broken = {**doc, "spec": {**doc.get("spec", {}), "replicaz": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_every_service_has_a_deployment_and_a_service_with_probes_on_its_ports() -> None:
    """One Deployment + Service per service; readiness and liveness on /healthz of a declared
    container port the Service exposes; the image runs the service's module."""
    objects = {where.split(":", 1)[1]: doc for where, doc in documents()}
    for name in SERVICES:
        deployment = objects[f"Deployment/{name}"]
        service = objects[f"Service/{name}"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", f"examples.food_delivery.{name}"]
        declared = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert "http" in declared
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= declared
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert {"configMapRef": {"name": "food-delivery"}} in container["envFrom"]
        env = {e["name"] for e in container["env"]}
        assert f"FOOD_{name.upper()}_PORT" in env
        assert "FOOD_ADVERTISE_HOST" in env


def test_the_configmap_configures_real_servers_for_every_service() -> None:
    """The ConfigMap names NATS and PostgreSQL, and the settings the services read from it
    point there (no SQLite file inside a pod)."""
    objects = {where.split(":", 1)[1]: doc for where, doc in documents()}
    data = objects["ConfigMap/food-delivery"]["data"]
    assert data["INTERLINK_BROKER"].startswith("nats://")
    for name in SERVICES:
        settings = runtime.Settings.from_env(
            name, {**data, "FOOD_STATE_DIR": str(Path("/tmp") / "food-k8s-check")}
        )
        assert settings.broker == "nats://nats:4222"
        assert settings.registry == "nats://nats:4222"
        assert settings.saga_store.startswith("postgresql://")
        if name in ("order", "payment", "notification"):
            assert settings.database.startswith("postgresql://"), name
        assert settings.host == "0.0.0.0"


def test_kustomization_lists_every_manifest() -> None:
    """kubectl apply -k applies every file here."""
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    files = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files


def test_the_gateway_is_the_entry_and_its_config_loads_from_the_pods_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's Deployment gives examples/food_delivery/gateway.yaml every variable it
    names (ConfigMap, its own env, the JWT key from a Secret defined here); the loaded config
    listens on the pod's address, reaches discovery in NATS, and the probes hit its admin
    port."""
    from interlink.gateway.config import load_config

    objects = {where.split(":", 1)[1]: doc for where, doc in documents()}
    deployment = objects["Deployment/gateway"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "examples.food_delivery.gateway"]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    service = objects["Service/gateway"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    env = dict(objects["ConfigMap/food-delivery"]["data"])
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = objects[f"Secret/{ref['name']}"]["stringData"][ref["key"]]
    for name in [k for k in list(os.environ) if k.startswith(("FOOD_", "INTERLINK_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(Path(runtime.__file__).with_name("gateway.yaml"))
    assert config.listen == f"0.0.0.0:{declared['http']}"
    assert config.admin == f"0.0.0.0:{declared['admin']}"
    assert config.discovery == "nats://nats:4222"
