"""deploy/: Prometheus config and rules (promtool), rule unit tests, the Grafana dashboard, the
docker-compose stack and the Kubernetes manifests, checked as far as they can be here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from ops.dataflow_api import BytewaxMetrics
from tests.brokers import free_port
from tests.conftest import ROOT
from tests.ops_flow import Observed, run_observed, small_stream

DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
METRIC = re.compile(r"\b(crm_engine[a-z0-9_:]*)")


def promtool(*args: str, cwd: Path = PROM) -> None:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus` (make test does it)")
    proc = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    promtool("check", "config", "prometheus.yml")


def test_promtool_check_rules() -> None:
    promtool("check", "rules", "rules.yml")


def test_promtool_test_rules() -> None:
    promtool("test", "rules", "rules_test.yml")


def test_every_yaml_and_json_file_parses() -> None:
    files = [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]
    assert len(files) >= 10
    for path in files:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc], path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in load(PROM / "rules.yml")["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 20
    return exprs


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Observed:
    """A small run with recovery on (snapshots, the recovery store) and a sink's metrics."""
    return run_observed(small_stream(customers=20, days=4), recovery_dir=tmp_path_factory.mktemp("recovery"))


def test_promtool_check_metrics_finds_nothing_in_the_exposition(observed: Observed) -> None:
    """The engine's /metrics after a real run, engine latency histograms included, passes
    ``promtool check metrics`` (naming, units, help texts) without a remark."""
    text = generate_latest(observed.registry).decode()
    assert 'crm_engine_alert_latency_seconds_bucket{le="0.005",since="read"}' in text
    assert "process_resident_memory_bytes" in text and "process_open_fds" in text and "python_gc_" in text
    assert "_created" not in text
    for family in ("crm_engine_snapshot_duration_seconds_bucket", "crm_engine_snapshot_size_bytes",
                   "crm_engine_recovery_store_size_bytes", "crm_engine_nba_prompts_total",
                   "crm_engine_alerts_suppressed_total", 'crm_engine_sink_delivery_latency_seconds_bucket{le="0.5"',
                   "crm_engine_sink_buffer_capacity_records"):
        assert family in text, family
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus` (make test does it)")
    proc = subprocess.run([binary, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def exported(observed: Observed) -> set[str]:
    """Every sample name the engine's registry exports after a small stream, plus the sample
    names of the labelled families that stream left without samples (lag, sinks)."""
    run = observed
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",)}
    bytewax = CollectorRegistry()  # registered by run.py with --bytewax-api-port
    BytewaxMetrics(free_port(), bytewax, timeout_s=0.2)
    for family in [*run.registry.collect(), *bytewax.collect()]:
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_rules_and_dashboard_use_only_exported_metrics(exported: set[str]) -> None:
    rules = load(PROM / "rules.yml")
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    used = {name for expr in [*rule_exprs(), *dashboard_exprs()] for name in METRIC.findall(expr)}
    assert {"crm_engine_alerts_total", "crm_engine_alert_latency_seconds_bucket",
            "crm_engine_source_consumer_lag_messages"} <= used
    unknown = sorted(name for name in used if name not in exported and name not in recorded)
    assert not unknown, f"not exported by the engine: {unknown}"
    assert "crm_engine_source_consumer_lag_messages" in exported


def test_dashboard_panels_have_a_datasource_and_unique_ids() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    uid = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]


def test_the_image_holds_every_package_the_commands_import() -> None:
    """The image cannot be built here (no registry for its base image), so its file list is
    checked: every package of the project but the tests, and ``run.py`` with its
    ``pyproject.toml`` (``--version``)."""
    copied: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(line.split()[1:-1])
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages | {"run.py", "pyproject.toml", "requirements.txt"} <= copied, packages - copied


def test_compose_stack() -> None:
    compose = load(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "engine", "producer", "topics"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    engine = services["engine"]
    assert engine["build"]["context"] == ".." and (DEPLOY / engine["build"]["context"] / "Dockerfile").exists()
    command = engine["command"]
    port = command[command.index("--metrics-port") + 1]
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    targets = load(PROM / "prometheus.yml")["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"engine:{port}"]
    assert services["producer"]["command"][0] == "produce"
    mounts = " ".join(services["grafana"]["volumes"])
    assert "grafana/dashboard.json" in mounts and "grafana/provisioning" in mounts
    assert "./prometheus:/etc/prometheus" in services["prometheus"]["volumes"][0]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)


def test_kubernetes_manifests() -> None:
    k8s = DEPLOY / "k8s"
    kustomization = load(k8s / "kustomization.yaml")
    docs = {load(k8s / name)["kind"]: load(k8s / name) for name in kustomization["resources"]}
    assert set(docs) == {"ConfigMap", "Service", "StatefulSet", "PodMonitor", "PodDisruptionBudget", "NetworkPolicy"}
    sts, svc, config = docs["StatefulSet"], docs["Service"], docs["ConfigMap"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    # one address per replica: <statefulset>-<ordinal>.<service>:<cluster port>, in ordinal order
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    addresses = config["data"]["CRM__ENGINE__ADDRESSES"].split(",")
    assert addresses == [f"{name}-{i}.{svc['metadata']['name']}:2101" for i in range(replicas)]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert 'CRM__ENGINE__PROCESS_ID="${HOSTNAME##*-}"' in container["args"][0]
    assert "--metrics-port 9100" in container["args"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"cluster": 2101, "metrics": 9100}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9100"
    endpoint = docs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert {key for key in config["data"] if key.startswith("CRM__")} == set(config["data"])
    # Pod Security "restricted"
    pod = sts["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # credentials from a Secret, never the ConfigMap
    assert {"secretRef": {"name": "crm-engine", "optional": True}} in container["envFrom"]
    secret = load(k8s / "secret.example.yaml")
    assert secret["kind"] == "Secret" and all(key.startswith("CRM__") for key in secret["stringData"])
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = docs[kind]["spec"].get("selector") or docs[kind]["spec"]["podSelector"]
        assert selector["matchLabels"].items() <= labels.items(), kind
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    allowed = {port["port"] for rule in docs["NetworkPolicy"]["spec"]["ingress"] for port in rule["ports"]}
    assert allowed == {2101, 9100}


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """Each panel's PromQL (Grafana's interval variables replaced by 5m, the others by a
    match-all) parses: promtool checks it as the expression of a recording rule."""
    exprs = [re.sub(r"\$\w+", ".*", re.sub(r"\$__\w+", "5m", expr)) for expr in dashboard_exprs()]
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"panel:expr{i}", "expr": expr}
                                                     for i, expr in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", "panels.yml", cwd=tmp_path)
