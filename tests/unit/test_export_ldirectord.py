"""ldirectord.cf export: every example and the lab's cluster file go out and come back through the importer to
the same services, ldirectord 4.12 itself reads the output without an error, and what ldirectord cannot express
is a comment plus a warning."""

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from lvsmail.commands.config import config
from lvsmail.config import ConfigError, load_cluster, parse_cluster
from lvsmail.interop.export_ldirectord import export_ldirectord
from lvsmail.interop.ldirectord import import_ldirectord

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "directors" / "examples").glob("*.yaml"))
#: What each check type comes back as (ldirectord negotiates all of lvsmail's mail checks but SMTP over TLS).
BACK_AS = {"smtps": "connect", "on": "on"}


def essence(service, back_as: dict) -> tuple:
    """What both formats carry: address, port, scheduler, forwarding, persistence, real servers, check timing."""
    c = service.check
    kind = "on" if c is None else back_as.get(c.type, c.type)
    check = (kind,) if kind in ("on", "off") else (kind, c.interval, c.timeout, c.fall)
    reals = sorted((rs.address, rs.port, rs.weight, rs.forwarding) for rs in service.realservers)
    fallback = None if service.fallback is None else (service.fallback.address, service.fallback.port,
                                                      service.fallback.forwarding)
    return (service.family, service.vip, service.protocol, service.port, service.fwmark, service.scheduler,
            service.forwarding, service.persistent, service.netmask, service.quiescent, tuple(reals), fallback, check)


def lab_spec(tmp_path, mode: str, director: int):
    from lvsmail.lab.cluster_up import MailCluster

    return parse_cluster(MailCluster(mode=mode, state_dir=tmp_path).cluster_text(director), "lab")


def expressible(spec):
    """The services ldirectord can hold: virtual6 takes only real6, so mixed-family services are left out."""
    return [s for s in spec.services if all((":" in rs.address) == (s.family == "inet6") for rs in s.realservers)]


#: Services of many shapes: fwmark with fallback and per-real forwarding, differing check timing, UDP, https.
SHAPES_YAML = """\
    cluster: c
    vips: [192.0.2.33, "2001:db8::33"]
    services:
      - name: fwmark-3
        fwmark: 3
        scheduler: sh
        persistent: 300
        netmask: 255.255.255.0
        forwarding: nat
        quiescent: true
        fallback: {address: 198.51.100.99, forwarding: dr}
        realservers: [{address: 198.51.100.20, weight: 5}, {address: 198.51.100.21, forwarding: dr}]
        check: {type: connect, interval: 5, timeout: 3, port: 443}
      - name: https
        vip: "2001:db8::33"
        port: 443
        realservers: ["[2001:db8::20]:443"]
        check: {type: https, interval: 2, timeout: 10, fall: 3, path: /health, host: web.example.org,
                receive: "ok (ready)", verify: false}
      - name: udp-53
        vip: 192.0.2.33
        protocol: udp
        port: 53
        realservers: [198.51.100.20]
      - name: pop3
        vip: 192.0.2.33
        port: 110
        realservers: [198.51.100.20]
        check: {type: pop3, interval: 2, timeout: 10}
    """


# -- round trips ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_comes_back_to_the_same_services(path):
    spec = load_cluster(path)
    result = export_ldirectord(spec)
    back = import_ldirectord(result.text).spec
    assert [essence(s, BACK_AS) for s in expressible(spec)] == [essence(s, {}) for s in back.services]
    left_out = [s for s in spec.services if s not in expressible(spec)]
    for index, service in enumerate(spec.services):
        if service in left_out:
            assert any(w.startswith(f"{path}: services[{index}]: cannot be expressed") for w in result.warnings)


@pytest.mark.parametrize("mode", ["tun", "dr", "nat"])
def test_the_lab_cluster_file_comes_back_to_the_same_services(tmp_path, mode):
    spec = lab_spec(tmp_path, mode, 1)
    result = export_ldirectord(spec)
    back = import_ldirectord(result.text).spec
    assert [essence(s, BACK_AS) for s in spec.services] == [essence(s, {}) for s in back.services]
    assert [s.name for s in back.services] == ["smtp", "imap", "http"]
    http = back.services[2].check
    assert (http.path, http.receive, http.receive_regex) == ("/solicitud.html", "test page", False)
    assert result.text.splitlines()[3:5] == ["checktimeout=10", "checkinterval=2"]
    assert any(w.startswith("lab: failover: cannot be expressed") for w in result.warnings)
    assert any(w.startswith("lab: sync: cannot be expressed") for w in result.warnings)


def test_services_of_every_shape_come_back():
    spec = parse_cluster(textwrap.dedent(SHAPES_YAML))
    result = export_ldirectord(spec)
    back = import_ldirectord(result.text).spec
    assert [essence(s, BACK_AS) for s in spec.services] == [essence(s, {}) for s in back.services]
    https = back.services[1].check
    # A plain text with pattern characters is written as the pattern matching it, and comes back as that pattern.
    assert (https.path, https.host, https.receive, https.receive_regex) == (
        "/health", "web.example.org", r"ok \(ready\)", True)
    assert back.services[0].check.port == 443
    # The intervals differ: ldirectord honours per-virtual checkinterval only with fork=yes.
    assert "fork=yes" in result.text.split("\n\n")[0]
    assert "checkinterval=5" in result.text and "checkinterval=2" in result.text
    assert "\tquiescent=yes" in result.text and "quiescent=no" in result.text.split("\n\n")[0]


# -- ldirectord itself ------------------------------------------------------------------------------------------

needs_ldirectord = pytest.mark.skipif(shutil.which("ldirectord") is None and not os.path.exists("/usr/sbin/ldirectord"),
                                      reason="ldirectord is not installed")


def ldirectord_reads(text: str, tmp_path) -> subprocess.CompletedProcess:
    """``ldirectord FILE status``: ldirectord has no --config-test, but ``status`` reads the whole file first.

    A configuration error exits 2 naming the line; a valid file with no daemon running exits 3 ("stopped").
    The file name is unique because ldirectord keys its pid file on it (/var/run/ldirectord.NAME.pid).
    """
    conf = tmp_path / f"lvsmail-export-test-{os.getpid()}.cf"
    conf.write_text(text)
    program = shutil.which("ldirectord") or "/usr/sbin/ldirectord"
    return subprocess.run([program, str(conf), "status"], capture_output=True, text=True, timeout=120)


def _export(spec, tmp_path) -> str:
    return export_ldirectord(spec, logfile=str(tmp_path / "ldirectord.log")).text


@needs_ldirectord
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_ldirectord_reads_every_example(path, tmp_path):
    done = ldirectord_reads(_export(load_cluster(path), tmp_path), tmp_path)
    assert (done.returncode, done.stderr) == (3, ""), done.stdout
    assert "ldirectord is stopped for" in done.stdout


@needs_ldirectord
@pytest.mark.parametrize("mode", ["tun", "nat"])
def test_ldirectord_reads_the_lab_file_and_every_shape(tmp_path, mode):
    for spec in (lab_spec(tmp_path, mode, 2), parse_cluster(textwrap.dedent(SHAPES_YAML))):
        done = ldirectord_reads(_export(spec, tmp_path), tmp_path)
        assert (done.returncode, done.stderr) == (3, ""), done.stdout


@needs_ldirectord
def test_ldirectord_status_does_catch_a_broken_file(tmp_path):
    """The check above means something: an unknown checktype is a configuration error (exit 2)."""
    text = _export(load_cluster(EXAMPLES[0]), tmp_path).replace("checktype=negotiate", "checktype=sometimes", 1)
    done = ldirectord_reads(text, tmp_path)
    assert done.returncode == 2
    assert "Error" in done.stderr and "checktype must be" in done.stderr


# -- what ldirectord cannot express -----------------------------------------------------------------------------

def test_every_setting_ldirectord_cannot_carry_is_a_comment_and_a_warning():
    spec = parse_cluster(textwrap.dedent("""\
        cluster: c
        vips: [192.0.2.33]
        timeouts: {tcp: 900}
        alerts: {email: [ops@example.org], repeat: 600, webhook: "https://hooks.example.org/x"}
        services:
          - {name: mail, vip: 192.0.2.33, port: 587, realservers: [{address: 198.51.100.20, name: rs1}],
             check: {type: submission, rise: 3, start: down, via: vip, credentials: /etc/lvsmail/probe.secret,
                     helo: d.example.org, interval: 1.5}}
          - {name: web, vip: 192.0.2.33, port: 80, realservers: [198.51.100.20],
             check: {type: http, method: POST, status: 204, interval: 1.5}}
        """))
    result = export_ldirectord(spec)
    for path in ("timeouts", "alerts.webhook", "services[0].check.rise", "services[0].check.start",
                 "services[0].check.via", "services[0].check.helo", "services[0].check.tls",
                 "services[0].check.credentials", "services[1].check.method", "services[1].check.status"):
        assert any(w.startswith(f"<string>: {path}: cannot be expressed") for w in result.warnings), path
        assert f"# lvsmail: {path} not expressed" in result.text, path
    assert any(w.startswith("<string>: check.interval: written to ldirectord.cf with a change: 1.5 s written as 2 s")
               for w in result.warnings)
    assert "emailalert=ops@example.org" in result.text and "emailalertfreq=600" in result.text
    assert any("rs1 are kept as comments" in w for w in result.warnings)
    back = import_ldirectord(result.text)
    assert back.spec.alerts.email == ("ops@example.org",) and back.spec.alerts.repeat == 600


def test_a_hash_in_a_value_is_refused_because_ldirectord_cuts_it():
    spec = parse_cluster("cluster: c\nvips: [192.0.2.33]\nservices:\n  - {name: web, vip: 192.0.2.33, port: 80, "
                         "realservers: [198.51.100.20], check: {type: http, path: '/a#b'}}\n")
    with pytest.raises(ConfigError) as caught:
        export_ldirectord(spec)
    assert "services[0].check.path" in str(caught.value) and "'#'" in str(caught.value)


def test_a_hash_in_the_receive_text_is_written_as_an_escape():
    spec = parse_cluster("cluster: c\nvips: [192.0.2.33]\nservices:\n  - {name: web, vip: 192.0.2.33, port: 80, "
                         "realservers: [198.51.100.20], check: {type: http, receive: 'item #1'}}\n")
    result = export_ldirectord(spec)
    assert 'receive="item \\x231"' in result.text
    import re

    assert re.search(import_ldirectord(result.text).spec.services[0].check.receive, "item #1")


# -- the command ------------------------------------------------------------------------------------------------

def test_cli_writes_the_file_atomically_and_warnings_to_stderr(cli_runner, tmp_path):
    pair = next(p for p in EXAMPLES if p.name == "clustermail-pair-a.yaml")
    out = tmp_path / "ldirectord.cf"
    result = cli_runner.invoke(config, ["export-ldirectord", str(pair), "-o", str(out), "--logfile",
                                        "/var/log/ld.log"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "failover: cannot be expressed in ldirectord.cf" in result.stderr
    assert 'logfile="/var/log/ld.log"' in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ldirectord.cf"]
    assert [s.vip for s in import_ldirectord(out).spec.services] == ["192.0.2.33", "192.0.2.34"]


def test_cli_exits_2_on_a_bad_cluster_file(cli_runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: c\nservices:\n  - {name: a, vip: 192.0.2.1, port: 25, scheduler: fastest}\n")
    result = cli_runner.invoke(config, ["export-ldirectord", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:3: services[0].scheduler" in result.stderr
    assert result.stdout == ""
