"""deploy/k8s validated offline against the Kubernetes schemas that kubernetes-validate ships
(strict: an unknown or misspelt field fails), and wired together: selectors, probes on the
app's endpoints, the secrets, the migration Job, the body limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES = "1.30.0"


def _manifests() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_every_manifest_is_valid_kubernetes() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate comes with the dev extra"
    )
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    for name in sorted(files):
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = _manifests()["Deployment"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_pieces_fit_together() -> None:
    docs = _manifests()
    deployment, service = docs["Deployment"], docs["Service"]
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert service["spec"]["selector"].items() <= pods.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pods.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    assert app["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert app["livenessProbe"]["httpGet"]["path"] == "/health/live"
    # the probes ask on APP_HEALTH_PORT, which the Service does not expose
    ports = {p["name"]: p["containerPort"] for p in app["ports"]}
    probes = [app[kind]["httpGet"]["port"] for kind in ("startupProbe", "readinessProbe")]
    probes.append(app["livenessProbe"]["httpGet"]["port"])
    assert {ports[name] for name in probes} == {int(docs["ConfigMap"]["data"]["APP_HEALTH_PORT"])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    sources = {next(iter(s.values()))["name"] for s in app["envFrom"]}
    secret, config = docs["Secret"], docs["ConfigMap"]
    assert sources == {secret["metadata"]["name"], config["metadata"]["name"]}
    assert {"APP_SECRET_KEY", "APP_STORAGE_KEY", "APP_DATABASE_URL"} <= set(secret["stringData"])
    assert config["data"]["APP_STORAGE"] == "database"

    job = docs["Job"]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"][-1] == "migrate"
    assert job["containers"][0]["envFrom"] == app["envFrom"]

    body = docs["Ingress"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body == f"{config['data']['APP_MAX_UPLOAD_MB']}m"
    assert (
        docs["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        == (service["metadata"]["name"])
    )
