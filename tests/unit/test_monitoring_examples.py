"""The example Prometheus rules and Grafana dashboard use only the metric names lvsmail exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DIRECTORS = Path(__file__).resolve().parents[2] / "directors"
RULES = DIRECTORS / "prometheus" / "lvsmail-rules.yml"
DASHBOARD = DIRECTORS / "grafana" / "lvsmail.json"

#: node_exporter's IPVS collector names (reused where they overlap) and lvsmail's own.
METRICS = {
    "node_ipvs_backend_connections_active", "node_ipvs_backend_connections_inactive", "node_ipvs_backend_weight",
    "node_ipvs_connections_total", "node_ipvs_incoming_packets_total", "node_ipvs_incoming_bytes_total",
    "node_ipvs_outgoing_bytes_total",
    "lvsmail_realserver_up", "lvsmail_check_duration_seconds_bucket", "lvsmail_health_transitions_total",
    "lvsmail_vrrp_state", "lvsmail_vrrp_transitions_total", "lvsmail_failover_duration_seconds_sum",
    "lvsmail_failover_duration_seconds_count",
}
#: PromQL words that look like metric names but are functions, keywords or labels.
_WORDS = {"sum", "by", "max", "count", "rate", "increase", "histogram_quantile", "le", "service", "instance",
          "address", "port", "vrrp_instance", "local_address", "local_port", "remote_address", "remote_port",
          "kind", "without", "on", "and", "or", "unless"}


def names(expr: str) -> set[str]:
    """Identifiers outside label matchers and strings that are not PromQL words."""
    stripped = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", expr)
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped) if w not in _WORDS}


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def test_rules_cover_the_four_alerts_and_use_known_metrics():
    doc = yaml.safe_load(RULES.read_text())
    alerts = [rule["alert"] for group in doc["groups"] for rule in group["rules"]]
    assert alerts == ["LvsmailRealServerDown", "LvsmailServiceWithoutHealthyRealServers", "LvsmailVrrpFlapping",
                      "LvsmailBothDirectorsMaster"]
    for expr in rule_exprs():
        assert names(expr) and names(expr) <= METRICS, expr


def test_dashboard_uses_known_metrics_and_unique_panel_ids():
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    used = set()
    for expr in dashboard_exprs():
        assert names(expr) <= METRICS, expr
        used |= names(expr)
    assert {"node_ipvs_backend_connections_active", "lvsmail_realserver_up", "lvsmail_vrrp_state"} <= used


def test_promtool_accepts_rules_and_dashboard_queries(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # Dashboard queries as recording rules, so promtool parses each one; variables become regexes.
    records = [{"record": f"lvsmail:panel_{i}", "expr": e.replace("$director", ".*").replace("$service", ".*")}
               for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
