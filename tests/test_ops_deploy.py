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
    """The image cannot be built here (no registry for its base image), so its Dockerfile is
    checked: two stages on one base pinned by version, the requirements installed in the
    builder, and in the runtime stage every package of the project but the benchmarks and the
    tests, with ``run.py`` and its ``pyproject.toml`` (``--version``)."""
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1]), "pin the base"
    stages = text.split("\nFROM ")[1:]
    assert [stage.split()[0] for stage in stages] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    builder, runtime = stages
    assert "requirements.txt" in builder and "pip install" in builder and "pip install" not in runtime
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    copied: set[str] = set()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(Path(source).name for source in line.split()[1:-1])
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages | {"run.py", "pyproject.toml", "requirements.txt"} <= copied, packages - copied
    assert not copied & {"bench", "tests", "."}, "the image ships neither bench/ nor tests/"
    assert re.search(r"^USER 10001$", runtime, re.M) and 'ENTRYPOINT ["python", "run.py"]' in runtime
    # bench/ is imported by `run.py evaluate` only: every other command runs without it
    run_py = (ROOT / "run.py").read_text()
    assert {line.strip() for line in run_py.splitlines() if "import" in line and "bench" in line} <= {
        "from bench import nba_loop", "from bench.evaluate import evaluate"}


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
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (source.startswith("./") and (DEPLOY / source).exists()) or source in compose["volumes"], volume


def test_compose_services_run_real_commands_and_keep_their_state() -> None:
    """Every service built from the engine's image runs a real ``run.py`` command (parsed by
    its own parser); the engine keeps recovery and dead letters on a volume and writes to
    Redis; Prometheus alerts through Alertmanager, which posts to the bridge; Grafana has no
    anonymous access and its password comes from the environment."""
    import run

    compose = load(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"dashboard", "alertmanager", "alert-bridge"} <= set(services)
    parser = run.build_parser()
    commands = set()
    for name, service in services.items():
        if service.get("image", "").startswith("crm-engine:") or "build" in service:
            args = parser.parse_args(service["command"])  # exits (fails the test) on a wrong option
            assert args.command is not None, name
            commands.add(args.command)
    assert commands == {"live", "produce", "dashboard", "alert-bridge"}
    engine = services["engine"]
    env = engine["environment"]
    assert env["CRM__REDIS__ENABLED"] == "true" and env["CRM__REDIS__URL"].startswith("redis://redis:")
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in engine["volumes"]}
    for key in ("CRM__ENGINE__RECOVERY_DIR", "CRM__KAFKA__SINK_DEAD_LETTER_PATH", "CRM__REDIS__DEAD_LETTER_PATH",
                "CRM__REDIS__INPUT_DEAD_LETTER_PATH"):
        assert any(Path(env[key]).is_relative_to(mount) and source in compose["volumes"]
                   for mount, source in mounts.items()), key
    assert "redis-data:/data" in services["redis"]["volumes"] and "--appendonly" in services["redis"]["command"]
    dashboard = services["dashboard"]["environment"]
    assert any(Path(dashboard["CRM__DASHBOARD__USERS_FILE"]).is_relative_to(v.split(":")[1])
               for v in services["dashboard"]["volumes"])
    # Prometheus -> Alertmanager -> bridge, by service name and port
    prometheus = load(PROM / "prometheus.yml")
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "9093:9093" in services["alertmanager"]["ports"]
    assert any(v.startswith("./alertmanager:/etc/alertmanager") for v in services["alertmanager"]["volumes"])
    bridge = services["alert-bridge"]
    listen = bridge["command"][bridge["command"].index("--listen") + 1]
    am = load(DEPLOY / "alertmanager" / "alertmanager.yml")
    for receiver in am["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"].startswith(f"http://alert-bridge:{listen.rpartition(':')[2]}/"), hook["url"]
    assert bridge["environment"]["CRM__ALERT_BRIDGE__ROBOT_URLS"].startswith("${CRM_ALERT_ROBOT_URLS:?")
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    example = (DEPLOY / ".env.example").read_text()
    for variable in ("GRAFANA_ADMIN_PASSWORD", "CRM_ALERT_ROBOT_URLS", "CRM_ALERT_ROBOT_FORMAT"):
        assert f"\n{variable}=" in example, variable


#: The Kubernetes version the manifests are validated against (its OpenAPI schemas ship in
#: the pinned ``kubernetes-validate`` wheel; nothing is downloaded).
KUBERNETES_VERSION = "1.31"
#: Kinds that are not Kubernetes' own (CustomResourceDefinitions installed by an operator):
#: their schema is the operator's, checked by the structural test below instead.
CUSTOM_KINDS = {"PodMonitor"}


def test_every_kubernetes_manifest_validates_against_the_schema() -> None:
    """Each document of ``deploy/k8s`` (but the Prometheus Operator's PodMonitor) validates,
    strictly (no unknown field), against Kubernetes' own OpenAPI schema."""
    import kubernetes_validate

    checked = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] == "Kustomization" or doc["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} ({doc['kind']}): {exc.message} at {list(exc.path)}")
            checked.append(doc["kind"])
    assert {"StatefulSet", "ConfigMap", "Service", "NetworkPolicy", "PodDisruptionBudget", "Deployment"} <= set(checked)


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    """``docker compose config`` checks a file against the Compose Specification's JSON schema;
    here the schema as shipped in docker-compose 1.29.2 (Apache-2.0; ``tests/data``). That
    version predates the top-level ``name``, which is checked apart."""
    import jsonschema

    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    compose = load(DEPLOY / "docker-compose.yml")
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", compose.pop("name"))
    errors = [f"{error.message} at {list(error.path)}"
              for error in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert not errors, errors


def test_kubernetes_manifests() -> None:
    k8s = DEPLOY / "k8s"
    kustomization = load(k8s / "kustomization.yaml")
    every = [load(k8s / name) for name in kustomization["resources"]]
    docs = {doc["kind"]: doc for doc in every if doc["metadata"]["name"] == "crm-engine"}
    assert set(docs) == {"ConfigMap", "Service", "StatefulSet", "PodMonitor", "PodDisruptionBudget", "NetworkPolicy"}
    bridge = {doc["kind"]: doc for doc in every if doc["metadata"]["name"] == "crm-alert-bridge"}
    assert set(bridge) == {"Deployment", "Service", "NetworkPolicy"} and len(every) == len(docs) + len(bridge)
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
    # spread over nodes: the anti-affinity selects the StatefulSet's own pods by host
    affinity = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    spread = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    allowed = {port["port"] for rule in docs["NetworkPolicy"]["spec"]["ingress"] for port in rule["ports"]}
    assert allowed == {2101, 9100}
    # the alert bridge: the engine's image and command, restricted too, reachable only from
    # Alertmanager's namespace, out to DNS and HTTPS only
    deployment = bridge["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    bridge_container = deployment["template"]["spec"]["containers"][0]
    assert bridge_container["image"] == container["image"] and bridge_container["args"][0] == "alert-bridge"
    assert bridge_container["securityContext"] == container["securityContext"]
    assert deployment["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    listen = bridge_container["args"][bridge_container["args"].index("--listen") + 1]
    assert int(listen.rpartition(":")[2]) == bridge_container["ports"][0]["containerPort"] == 9095
    assert bridge["Service"]["spec"]["selector"].items() <= labels.items()
    policy = bridge["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert [rule["from"][0]["namespaceSelector"] for rule in policy["ingress"]] == [
        {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]
    assert {port["port"] for rule in policy["egress"] for port in rule["ports"]} == {53, 443}


#: Every setting naming a file or directory the engine writes; a new one must be added here
#: (``test_every_path_setting_is_known``) so that the deployments give it a writable place.
WRITTEN_PATHS = {("engine", "recovery_dir"), ("kafka", "sink_dead_letter_path"), ("redis", "dead_letter_path"),
                 ("redis", "input_dead_letter_path"), ("webhook", "dead_letter_path"), ("audit", "file"),
                 ("dashboard", "users_file")}
#: ... and those it only reads.
READ_PATHS = {("audit", "key_file"), ("crypto", "key_file")}


def _path_settings() -> set[tuple[str, str]]:
    import dataclasses

    from config.settings import Settings

    found = set()
    for section in dataclasses.fields(Settings):
        for setting in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            name = setting.name
            if name == "file" or name.endswith(("_path", "_dir", "_file")):
                found.add((section.name, name))
    return found


def test_every_path_setting_is_known() -> None:
    assert _path_settings() <= WRITTEN_PATHS | READ_PATHS, _path_settings() - WRITTEN_PATHS - READ_PATHS


def test_every_file_the_engine_writes_is_on_a_writable_volume_of_its_pod() -> None:
    """With a read-only root file system, each path the engine writes (the ConfigMap's value,
    or the default, relative to the image's working directory) is under a volume mounted
    writable; the recovery directory is on the pod's own persistent claim."""
    from config.settings import load_settings

    k8s = DEPLOY / "k8s"
    sts, config = load(k8s / "statefulset.yaml"), load(k8s / "configmap.yaml")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    claims = {claim["metadata"]["name"] for claim in sts["spec"].get("volumeClaimTemplates", [])}
    volumes = {volume["name"] for volume in pod["volumes"]} | claims
    writable = {mount["mountPath"].rstrip("/"): mount["name"] for mount in container["volumeMounts"]
                if not mount.get("readOnly") and mount["name"] in volumes}
    settings = load_settings(environ=config["data"])
    workdir = Path(re.search(r"^WORKDIR (\S+)", (ROOT / "Dockerfile").read_text(), re.M)[1])  # type: ignore[index]
    checked = 0
    for section, name in sorted(WRITTEN_PATHS):
        value = getattr(getattr(settings, section), name)
        if not value:
            continue  # off
        path = workdir / value
        mounts = [mount for mount in writable if path.is_relative_to(mount)]
        assert mounts, f"[{section}] {name} = {path} is on the read-only root file system"
        if (section, name) == ("engine", "recovery_dir"):
            assert writable[max(mounts, key=len)] in claims, "the recovery directory must be on a persistent claim"
        checked += 1
    assert checked >= 6
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"] and claim["resources"]["requests"]["storage"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """Each panel's PromQL (Grafana's interval variables replaced by 5m, the others by a
    match-all) parses: promtool checks it as the expression of a recording rule."""
    exprs = [re.sub(r"\$\w+", ".*", re.sub(r"\$__\w+", "5m", expr)) for expr in dashboard_exprs()]
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"panel:expr{i}", "expr": expr}
                                                     for i, expr in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", "panels.yml", cwd=tmp_path)
