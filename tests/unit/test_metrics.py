"""The Prometheus endpoint: scraped over HTTP from a running director, parsed with prometheus_client's parser,
and checked against the metric names and labels the example alert rules and Grafana dashboard use."""

import asyncio
import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lvsmail.config import ConfigError, parse_cluster  # noqa: E402
from lvsmail.console.metrics import Exporter, families  # noqa: E402
from lvsmail.console.outages import Outage  # noqa: E402
from lvsmail.director.daemon import Director  # noqa: E402
from lvsmail.ipvs.fake import FakeIPVS  # noqa: E402
from support import ScriptedChecks  # noqa: E402
from support.cluster import cluster_yaml, service  # noqa: E402

DIRECTORS = Path(__file__).resolve().parents[2] / "directors"

#: The cluster without its metrics section (nine lines: the section starts on line 10).
BASE = cluster_yaml(service(forwarding="dr", check={"type": "smtp", "interval": 0.05, "timeout": 0.5}), name="metrics")


def metrics_cluster(port: int) -> str:
    """The cluster with its exporter on 127.0.0.1:``port``."""
    return BASE + f'metrics:\n  listen: "127.0.0.1:{port}"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def used_metrics() -> dict[str, set[str]]:
    """Metric name -> labels named next to it, from the alert rules and the dashboard's queries."""
    exprs = [r["expr"] for g in yaml.safe_load((DIRECTORS / "prometheus" / "lvsmail-rules.yml").read_text())["groups"]
             for r in g["rules"]]
    exprs += [t["expr"] for p in json.loads((DIRECTORS / "grafana" / "lvsmail.json").read_text())["panels"]
              for t in p["targets"]]
    out: dict[str, set[str]] = {}
    for e in exprs:
        by = set(re.findall(r"by \(([^)]*)\)", e))
        labels = {w.strip() for group in by for w in group.split(",")} - {"instance", "le"}
        for name in re.findall(r"\b((?:node_ipvs|lvsmail)_[a-z_]+)", e):
            out.setdefault(name, set()).update(labels)
    return out


def scrape(port: int, host: str = "127.0.0.1") -> dict:
    """name -> family, from the endpoint's text."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_names(fams: dict) -> set[str]:
    return {s.name for f in fams.values() for s in f.samples}


def test_scrape_of_a_running_director_has_the_names_and_labels_rules_use(tmp_path):
    port = free_port()
    path = tmp_path / "metrics.yaml"
    path.write_text(metrics_cluster(port))
    checks = ScriptedChecks(down_latency=0.003, up_latency=0.02)

    async def go():
        d = Director(str(path), FakeIPVS(), repair_interval=30, state_dir=str(tmp_path / "state"),
                     engine_options={"checker": checks})
        task = asyncio.create_task(d.run())
        await asyncio.wait_for(d.ready.wait(), 5)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not all(st.checks >= 2 for st in d.engine.states.values()):
            assert loop.time() < end
            await asyncio.sleep(0.02)
        checks.down.add("198.51.100.32")
        while d.engine.states[("smtp", "198.51.100.32", 25)].up:
            assert loop.time() < end
            await asyncio.sleep(0.02)
        fams = await asyncio.to_thread(scrape, port)
        d.request_stop()
        await task
        return fams

    fams = asyncio.run(go())
    names = sample_names(fams)
    up = {tuple(sorted(s.labels.items())): s.value for s in fams["lvsmail_realserver_up"].samples}
    assert up == {(("address", "198.51.100.20"), ("port", "25"), ("service", "smtp")): 1.0,
                  (("address", "198.51.100.32"), ("port", "25"), ("service", "smtp")): 0.0}
    transitions = {s.labels["address"]: s.value for s in fams["lvsmail_health_transitions"].samples
                   if s.name == "lvsmail_health_transitions_total"}
    assert transitions["198.51.100.32"] == 1.0
    weights = {s.labels["remote_address"]: s.value for s in fams["node_ipvs_backend_weight"].samples}
    assert weights == {"198.51.100.20": 1.0}  # the failed one left the kernel
    backend = fams["node_ipvs_backend_connections_active"].samples[0].labels
    assert set(backend) == {"local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark"}
    count = [s for s in fams["lvsmail_check_duration_seconds"].samples
             if s.name == "lvsmail_check_duration_seconds_count"]
    assert count[0].labels == {"service": "smtp"} and count[0].value >= 4
    for name, labels in used_metrics().items():
        if name.startswith(("lvsmail_vrrp", "lvsmail_failover")):
            continue  # no failover in this cluster: checked from a snapshot below
        assert name in names, name
        for fam in fams.values():
            for s in fam.samples:
                if s.name == name:
                    assert labels <= set(s.labels), (name, labels, s.labels)


def test_endpoint_starts_moves_and_stops_on_every_prometheus_client():
    """prometheus_client 0.16 (Debian 12) returns nothing from start_http_server and 0.17+ returns the
    server: the exporter keeps its own handle, so it serves, moves (to IPv6 too) and stops on both."""
    from types import SimpleNamespace

    from lvsmail.spec import MetricsSpec

    v4, v6 = free_port(), free_port()

    def refused(host, port):
        with pytest.raises(OSError):
            scrape(port, host)
        return True

    async def go():
        ex = Exporter(view=None)
        ex.snapshot = lambda: {"services": [], "failover": None}  # the scrape path, without a director
        ex.outages = lambda: []
        ex.configure(SimpleNamespace(metrics=MetricsSpec(listen=f"127.0.0.1:{v4}")))
        first = await asyncio.to_thread(scrape, v4)
        ex.configure(SimpleNamespace(metrics=MetricsSpec(listen=f"[::1]:{v6}")))
        moved = await asyncio.to_thread(scrape, v6, "[::1]")
        old_closed = await asyncio.to_thread(refused, "127.0.0.1", v4)
        thread = ex.thread
        ex.configure(SimpleNamespace(metrics=None))
        return first, moved, old_closed, ex.listen, thread, await asyncio.to_thread(refused, "[::1]", v6)

    first, moved, old_closed, listen, thread, new_closed = asyncio.run(go())
    for fams in (first, moved):
        assert [s.value for s in fams["node_ipvs_connections"].samples if s.name == "node_ipvs_connections_total"] \
            == [0.0]
        assert "lvsmail_check_duration_seconds" in fams
    assert old_closed and new_closed and listen is None
    assert not thread.is_alive()


def test_vrrp_and_failover_families_from_a_snapshot():
    snap = {"services": [], "failover": {"instances": [
        {"name": "VI_1", "role": "master", "transitions": 3, "adverts_dropped": {"ttl": 7, "rate": 2}},
        {"name": "VI_2", "role": "backup", "transitions": 1}]}}
    outages = [Outage("director_takeover", 1.2, 1.0), Outage("director_takeover", 3.5, 2.0),
               Outage("realserver_removal", 0.8, 3.0)]
    from prometheus_client import CollectorRegistry, generate_latest

    class C:
        def collect(self):
            yield from families(snap, outages)

    reg = CollectorRegistry()
    reg.register(C())
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    state = {s.labels["vrrp_instance"]: s.value for s in fams["lvsmail_vrrp_state"].samples}
    assert state == {"VI_1": 2.0, "VI_2": 1.0}  # the rules' split-brain alert counts value 2
    total = {s.labels["vrrp_instance"]: s.value for s in fams["lvsmail_vrrp_transitions"].samples
             if s.name.endswith("_total")}
    assert total == {"VI_1": 3.0, "VI_2": 1.0}
    dropped = {(s.labels["vrrp_instance"], s.labels["reason"]): s.value
               for s in fams["lvsmail_vrrp_adverts_dropped"].samples if s.name.endswith("_total")}
    assert dropped == {("VI_1", "ttl"): 7.0, ("VI_1", "rate"): 2.0}
    h = {(s.name, s.labels.get("kind"), s.labels.get("le")): s.value
         for s in fams["lvsmail_failover_duration_seconds"].samples}
    assert h[("lvsmail_failover_duration_seconds_count", "director_takeover", None)] == 2
    assert h[("lvsmail_failover_duration_seconds_sum", "director_takeover", None)] == pytest.approx(4.7)
    assert h[("lvsmail_failover_duration_seconds_bucket", "director_takeover", "2.0")] == 1
    assert h[("lvsmail_failover_duration_seconds_bucket", "realserver_removal", "+Inf")] == 1
    used = used_metrics()
    names = sample_names(fams)
    for name in [n for n in used if n.startswith(("lvsmail_vrrp", "lvsmail_failover"))]:
        assert name in names, name


@pytest.mark.parametrize("section, message", [
    ('metrics: {listen: "localhost:9712"}', "'localhost' is not an IP address"),
    ('metrics: {listen: "127.0.0.1"}', "expected address:port"),
    ('metrics: {listen: "127.0.0.1:99999"}', "port must be 1..65535"),
    ('metrics: {listen: "::1:9712"}', "IPv6 addresses in brackets"),
    ('metrics: {port: 9712}', "unknown key"),
])
def test_bad_metrics_sections_are_refused_with_file_line_and_key(section, message):
    text = BASE + section + "\n"
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_cluster(text, "c.yaml")
    assert "c.yaml:10: metrics" in str(err.value)


def test_metrics_section_defaults_and_round_trips():
    from lvsmail.config import dump_cluster

    base = BASE
    assert parse_cluster(base + "metrics: {}\n").metrics.listen == "127.0.0.1:9712"
    assert parse_cluster(base + "metrics:\n").metrics.listen == "127.0.0.1:9712"
    assert parse_cluster(base).metrics is None
    spec = parse_cluster(base + 'metrics: {listen: "[::1]:9100"}\n')
    assert parse_cluster(dump_cluster(spec)).metrics == spec.metrics
