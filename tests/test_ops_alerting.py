"""Alert routing: the Alertmanager configuration (``amtool``), a runbook for every rule, the
robots' wire formats, the alert bridge against a local fake robot, and end to end a real
Alertmanager (Debian ``prometheus-alertmanager``) posting to the bridge, which posts to the
fake robot, signed as DingTalk and Feishu check."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from ops.alert_bridge import AlertBridge, BridgeServer, Notification, NotificationError, Robot, render
from schemas.robots import dingtalk_sign, feishu_sign, robot_request
from tests.brokers import free_port
from tests.conftest import ROOT
from tests.services import wait_until

DEPLOY = ROOT / "deploy"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RUNBOOKS = DEPLOY / "runbooks"
SECRET = "SEC-test-secret"


def require(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} is not installed: `apt-get install -y prometheus-alertmanager` (make test does it)")
    return binary


def amtool(*args: str) -> str:
    proc = subprocess.run([require("amtool"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- configuration ---------------------------------------------------------------------------

def test_amtool_check_config() -> None:
    out = amtool("check-config", str(AM_CONFIG))
    assert "SUCCESS" in out and "2 receivers" in out


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=CrmEngineDown", "job=crm-engine"], "oncall-page"),
    (["severity=warning", "alertname=CrmEngineDeadLetterRate", "job=crm-engine"], "team-chat"),
    (["alertname=SomethingWithoutSeverity"], "team-chat"),
])
def test_routes_send_each_severity_to_its_receiver(labels: list[str], receiver: str) -> None:
    out = amtool("config", "routes", "test", "--config.file", str(AM_CONFIG), *labels)
    assert out.split() == [receiver]


def test_every_rule_has_a_routed_severity_a_summary_and_a_runbook() -> None:
    rules = alert_rules()
    assert len(rules) >= 12
    bases = set()
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        base, _, file = url.rpartition("/")
        assert file == f"{name}.md" and base.startswith("https://"), url
        bases.add(base)
        runbook = RUNBOOKS / file
        assert runbook.is_file(), f"{name}: no runbook {runbook.relative_to(ROOT)}"
        text = runbook.read_text()
        assert text.startswith(f"# {name} ({rule['labels']['severity']})"), name
        for section in ("**Means.**", "**Confirm.**", "**First actions.**", "**Escalate**"):
            assert section in text, (name, section)
    assert len(bases) == 1, f"one runbook base for every rule (a deployer replaces it once): {bases}"
    documented = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert documented == {rule["alert"] for rule in rules}, "a runbook without a rule"


def test_inhibitions_name_only_alerts_that_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    config = yaml.safe_load(AM_CONFIG.read_text())
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            label, _, value = matcher.replace("!~", "=~").replace("=~", "=").partition("=")
            if label == "alertname":
                pattern = value.strip('"')
                assert any(re.fullmatch(pattern, name) for name in names), matcher


def test_prometheus_sends_its_alerts_to_alertmanager() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    config = yaml.safe_load(AM_CONFIG.read_text())
    urls = {hook["url"] for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])}
    assert urls and all(url.startswith("http://alert-bridge:9095/") for url in urls)


# --- the robots' formats and the bridge ------------------------------------------------------

def test_signatures_are_the_robots_documented_algorithms() -> None:
    """The examples in DingTalk's and Feishu's documentation, recomputed independently."""
    import base64
    import hashlib
    import hmac

    ts = 1767225600000
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest())
    assert dingtalk_sign(SECRET, ts) == expected.decode()
    expected = base64.b64encode(hmac.new(f"{ts // 1000}\n{SECRET}".encode(), b"", hashlib.sha256).digest())
    assert feishu_sign(SECRET, ts // 1000) == expected.decode()
    url, _ = robot_request("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=t", "t", "x", SECRET,
                           now=ts / 1000)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["access_token"] == ["t"] and query["sign"] == [dingtalk_sign(SECRET, ts)]


def notification(status: str = "firing", alerts: int = 1, **common: str) -> dict[str, Any]:
    labels = {"alertname": "CrmEngineSinkFailing", "severity": "critical", "job": "crm-engine", **common}
    return {
        "version": "4", "groupKey": "{}:{alertname=\"CrmEngineSinkFailing\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "oncall-page", "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": {"runbook_url": "https://runbooks.example.com/crm-engine/CrmEngineSinkFailing.md"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": status, "labels": {**labels, "sink": f"sink{i}"},
                    "annotations": {"summary": f"Sink sink{i} is failing to deliver",
                                    "description": "Records fail.",
                                    "runbook_url": "https://runbooks.example.com/crm-engine/CrmEngineSinkFailing.md"},
                    "startsAt": "2026-01-05T11:56:33.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph", "fingerprint": f"f{i}"}
                   for i in range(alerts)],
    }


def test_render_lists_alerts_with_their_labels_and_the_runbook() -> None:
    title, text, level = render(Notification.parse(orjson.dumps(notification(alerts=3))), "wecom", max_alerts=2)
    assert title == "[FIRING:3] CrmEngineSinkFailing (critical)" and level == "critical"
    assert text.splitlines()[0] == ('**<font color="warning">FIRING:3</font> CrmEngineSinkFailing** · '
                                    "severity critical · job crm-engine")
    assert "- **Sink sink0 is failing to deliver**" in text and "sink=sink1 · since 2026-01-05T11:56:33Z" in text
    assert "sink2" not in text and "- ... and 1 more" in text
    assert "[CrmEngineSinkFailing](https://runbooks.example.com/crm-engine/CrmEngineSinkFailing.md)" in text
    title, text, level = render(Notification.parse(orjson.dumps(notification("resolved"))), "feishu")
    assert title.startswith("[RESOLVED] ") and level == "resolved" and "<font color='green'>RESOLVED</font>" in text


@pytest.mark.parametrize("body", [b"not json", b"[]", orjson.dumps({**notification(), "version": "3"}),
                                  orjson.dumps({**notification(), "alerts": []})])
def test_what_is_not_a_version_4_notification_is_refused(body: bytes) -> None:
    with pytest.raises(NotificationError):
        Notification.parse(body)


@dataclass
class FakeRobot:
    """A group robot's HTTP endpoint: records every request, answers like ``fmt``'s robot,
    checks DingTalk's and Feishu's signatures with ``secret``, fails the first ``fail``."""

    fmt: str
    secret: str = ""
    fail: int = 0
    status: int = 500
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0

    def __post_init__(self) -> None:
        robot = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                robot.requests.append((self.path, body))
                if len(robot.requests) <= robot.fail:
                    self.send_response(robot.status)
                    self.end_headers()
                    return
                reply = robot.answer(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/robot/send?access_token=tok"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: dict[str, Any]) -> bytes:
        if self.secret and not self.signed(path, body):
            self.bad_signatures += 1
            return orjson.dumps({"errcode": 310000, "errmsg": "sign not match"} if self.fmt != "feishu"
                                else {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"})
        return orjson.dumps({"code": 0, "msg": "success"} if self.fmt == "feishu" else {"errcode": 0, "errmsg": "ok"})

    def signed(self, path: str, body: dict[str, Any]) -> bool:
        now = time.time()
        if self.fmt == "dingtalk":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            ts = int(query["timestamp"][0])
            return abs(now - ts / 1000) < 3600 and query["sign"] == [dingtalk_sign(self.secret, ts)]
        if self.fmt == "feishu":
            ts = int(body["timestamp"])
            return abs(now - ts) < 3600 and body["sign"] == feishu_sign(self.secret, ts)
        return True

    def text(self, index: int = -1) -> str:
        body = self.requests[index][1]
        if self.fmt == "wecom":
            return str(body["markdown"]["content"])
        if self.fmt == "dingtalk":
            return str(body["markdown"]["text"])
        return str(body["card"]["elements"][0]["content"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fake_robot(fmt: str, secret: str = "", fail: int = 0, status: int = 500) -> Iterator[FakeRobot]:
    robot = FakeRobot(fmt, secret, fail, status)
    try:
        yield robot
    finally:
        robot.close()


@contextmanager
def bridge_server(robots: list[Robot], attempts: int = 3) -> Iterator[str]:
    server = BridgeServer(AlertBridge(robots, timeout_s=2.0, attempts=attempts, backoff_s=0.01), "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.address[1]}"
    finally:
        server.shutdown()


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_bridge_retries_a_failing_robot_then_delivers() -> None:
    with fake_robot("dingtalk", SECRET, fail=2) as robot, \
            bridge_server([Robot(robot.url, "dingtalk", SECRET)]) as bridge:
        status, _ = post(bridge + "/critical", orjson.dumps(notification()))
    assert status == 200 and len(robot.requests) == 3 and robot.bad_signatures == 0
    assert robot.requests[-1][1]["markdown"]["title"] == "[FIRING] CrmEngineSinkFailing (critical)"


def test_bridge_answers_502_when_a_robot_did_not_take_it_and_does_not_repeat_the_other() -> None:
    with fake_robot("wecom") as good, fake_robot("feishu", fail=10**6) as bad, \
            bridge_server([Robot(good.url, "wecom"), Robot(bad.url, "feishu")], attempts=2) as bridge:
        body = orjson.dumps(notification())
        first, reason = post(bridge, body)
        second, _ = post(bridge, body)  # Alertmanager's retry
    assert first == second == 502 and "robot 1" in reason and "HTTP 500" in reason
    assert len(bad.requests) == 4 and len(good.requests) == 1  # delivered once, not on the retry


def test_bridge_refuses_what_is_not_a_notification_and_a_robot_refusal_is_not_retried() -> None:
    with fake_robot("wecom", fail=1, status=404) as robot, bridge_server([Robot(robot.url, "wecom")]) as bridge:
        assert post(bridge, b'{"version": "3"}')[0] == 400
        assert post(bridge, orjson.dumps(notification()))[0] == 502
        assert len(robot.requests) == 1
        with urllib.request.urlopen(bridge + "/healthz", timeout=5) as response:
            assert response.status == 200


# --- end to end: Alertmanager -> bridge -> robot ---------------------------------------------

@contextmanager
def alertmanager(tmp: Path, bridge_url: str) -> Iterator[str]:
    """A real Alertmanager with the deploy configuration: its routes and inhibitions, the
    receivers pointed at ``bridge_url``, the waits shortened for a test."""
    config = yaml.safe_load(AM_CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace("http://alert-bridge:9095", bridge_url)
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="2s", repeat_interval="1h")
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "alertmanager.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([require("prometheus-alertmanager"), f"--config.file={tmp / 'alertmanager.yml'}",
                             f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address=", f"--web.external-url={url}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: _ready(url) or proc.poll() is not None, 30) and proc.poll() is None, \
            (tmp / "alertmanager.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def fire(am: str, *alerts: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    payload = [{"labels": alert["labels"], "annotations": alert.get("annotations", {}),
                "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat(),
                "generatorURL": "http://prometheus:9090/graph"} for alert in alerts]
    status, body = post(am + "/api/v2/alerts", orjson.dumps(payload))
    assert status == 200, body


def rule_alert(name: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus would send it for rule ``name`` (its labels and annotations)."""
    rule = next(rule for rule in alert_rules() if rule["alert"] == name)
    annotations = {key: value.replace("{{ $labels.instance }}", labels.get("instance", ""))
                   .replace("{{ $labels.sink }}", labels.get("sink", ""))
                   for key, value in rule["annotations"].items()}
    return {"labels": {"alertname": name, "job": "crm-engine", **rule["labels"], **labels},
            "annotations": annotations}


@pytest.mark.parametrize(("fmt", "secret"), [("dingtalk", SECRET), ("feishu", SECRET), ("wecom", "")])
def test_alertmanager_posts_through_the_bridge_to_the_robot(tmp_path: Path, fmt: str, secret: str) -> None:
    with fake_robot(fmt, secret, fail=1) as robot, \
            bridge_server([Robot(robot.url, fmt, secret)], attempts=1) as bridge, alertmanager(tmp_path, bridge) as am:
        fire(am, rule_alert("CrmEngineSinkFailing", sink="webhook", instance="engine-0:9100"))
        # the robot's first answer is a 500: the bridge answers 502 and Alertmanager retries
        assert wait_until(lambda: len(robot.requests) >= 2, 30), (tmp_path / "alertmanager.log").read_text()
    assert robot.bad_signatures == 0
    text = robot.text()
    assert "FIRING" in text and "CrmEngineSinkFailing" in text and "severity critical" in text
    assert "**Sink webhook is failing to deliver**" in text and "instance=engine-0:9100 · sink=webhook" in text
    assert "(https://runbooks.example.com/crm-engine/CrmEngineSinkFailing.md)" in text
    assert f"[Alertmanager]({am})" in text
    if fmt == "feishu":
        assert robot.requests[-1][1]["card"]["header"]["template"] == "red"


def test_alertmanager_inhibits_the_engines_other_alerts_while_it_is_down(tmp_path: Path) -> None:
    with fake_robot("wecom") as robot, bridge_server([Robot(robot.url, "wecom")]) as bridge, \
            alertmanager(tmp_path, bridge) as am:
        fire(am, rule_alert("CrmEngineDown", instance="engine-0:9100"),
             rule_alert("CrmEngineSinkFailing", sink="redis"), rule_alert("CrmEngineDeadLetterRate"))
        assert wait_until(lambda: len(robot.requests) >= 1, 30), (tmp_path / "alertmanager.log").read_text()
        time.sleep(4)  # two group intervals: whatever else was to come has come
    texts = [robot.text(i) for i in range(len(robot.requests))]
    assert len(texts) == 1 and "CrmEngineDown" in texts[0], texts
