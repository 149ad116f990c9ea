"""keepalived.conf export: every example and the lab's cluster file go out and come back through the importer
to the same services, keepalived 2.2.7 itself accepts the output, and what keepalived cannot express is a
comment plus a warning."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lvsmail.commands.config import config
from lvsmail.config import ConfigError, load_cluster, parse_cluster
from lvsmail.interop.export_keepalived import export_keepalived, regex_literal
from lvsmail.interop.keepalived import import_keepalived

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "directors" / "examples").glob("*.yaml"))
PAIR = next(p for p in EXAMPLES if p.name == "clustermail-pair-a.yaml")
#: Check types keepalived has a checker for come back as themselves; the rest as keepalived can check them.
BACK_AS = {"submission": "smtp", "imap": "connect", "imaps": "connect", "pop3": "connect", "pop3s": "connect",
           "smtps": "connect", "on": None, "off": "external"}

#: A firewall-mark IPv6 service with fallback, quiescence, mixed forwarding and an https check; a UDP service.
FWMARK_YAML = """\
        cluster: c
        vips: ["2001:db8::33"]
        services:
          - name: web6
            fwmark: 7
            family: inet6
            scheduler: sh
            persistent: 300
            netmask: 64
            forwarding: nat
            quiescent: true
            fallback: {address: "2001:db8::99"}
            realservers:
              - {address: "2001:db8::20", weight: 3}
              - {address: "2001:db8::21", forwarding: dr}
            check: {type: https, interval: 3.5, timeout: 2, fall: 3, start: down, path: /h, host: web.example.org,
                    receive: "a.b", status: 204, verify: false}
          - name: dns
            vip: "2001:db8::33"
            protocol: udp
            port: 53
            realservers: ["[2001:db8::20]:53"]
            check: {type: connect, port: 5353}
        """
#: An external check and an always-down one (both run programs: keepalived's script security applies).
SCRIPTS_YAML = """\
        cluster: c
        vips: [192.0.2.33]
        services:
          - {name: smtp, vip: 192.0.2.33, port: 25, realservers: [198.51.100.20],
             check: {type: external, command: "/usr/local/bin/probe --deep", timeout: 2.5}}
          - {name: http, vip: 192.0.2.33, port: 80, realservers: [198.51.100.20], check: {type: off}}
        """


def essence(service, back_as: dict) -> tuple:
    """What both formats carry: address, port, scheduler, forwarding, persistence, real servers, check timing."""
    c = service.check
    kind = None if c is None else back_as.get(c.type, c.type)
    check = None if kind is None else (kind, c.interval, c.timeout, c.fall)
    if kind is not None and c.type == "off":
        check = (kind, None, None, None)  # /bin/false: timing is irrelevant to a check that always fails
    reals = sorted((rs.address, rs.port, rs.weight, rs.forwarding) for rs in service.realservers)
    fallback = None if service.fallback is None else (service.fallback.address, service.fallback.port,
                                                      service.fallback.forwarding)
    return (service.family, service.vip, service.protocol, service.port, service.fwmark, service.scheduler,
            service.forwarding, service.persistent, service.netmask, service.quiescent, tuple(reals), fallback, check)


def back_essence(service) -> tuple:
    """The imported service's essence, with an imported /bin/false check taken for what it was."""
    out = essence(service, {})
    if service.check is not None and service.check.command and service.check.command.startswith("/bin/false"):
        out = out[:-1] + (("external", None, None, None),)
    return out


def round_trip(spec):
    result = export_keepalived(spec)
    back = import_keepalived(result.text)
    return result, back


def lab_text(tmp_path, mode: str, director: int) -> str:
    from lvsmail.lab.cluster_up import MailCluster

    return MailCluster(mode=mode, state_dir=tmp_path).cluster_text(director)


# -- round trips ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_comes_back_to_the_same_services(path):
    spec = load_cluster(path)
    result, back = round_trip(spec)
    assert [essence(s, BACK_AS) for s in spec.services] == [back_essence(s) for s in back.spec.services]
    assert back.spec.vips == tuple(v for v in spec.vips if any(s.vip == v for s in spec.services))


@pytest.mark.parametrize("mode", ["tun", "dr", "nat"])
def test_the_lab_cluster_file_comes_back_to_the_same_services(tmp_path, mode):
    spec = parse_cluster(lab_text(tmp_path, mode, 1), "lab")
    result, back = round_trip(spec)
    assert [essence(s, BACK_AS) for s in spec.services] == [back_essence(s) for s in back.spec.services]
    # The lab's HTTP check: the page and its text, as the seed's request/receive.
    http = next(s for s in back.spec.services if s.port == 80).check
    assert (http.path, http.receive, http.receive_regex) == ("/solicitud.html", "test page", False)
    assert "lvs_sync_daemon eth1 mail id 7" in result.text
    assert "virtual_router_id 51" in result.text and "priority 150" in result.text
    assert [w for w in result.warnings if "check.type" in w] == [
        "lab: services[1].check.type: written to keepalived.conf with a change: keepalived 2.2.7 has no IMAP "
        "check: TCP_CHECK only proves the port accepts connections"]


def test_building_the_lab_cluster_text_starts_nothing(tmp_path):
    """The lab's cluster file comes from its constructor without namespaces, files or root."""
    text = lab_text(tmp_path, "tun", 2)
    assert "priority: 100" in text
    assert list(tmp_path.iterdir()) == []
    if os.geteuid() == 0 and shutil.which("setpriv"):
        code = ("import tempfile; from lvsmail.lab.cluster_up import MailCluster; from lvsmail.config import "
                "parse_cluster; s = parse_cluster(MailCluster(state_dir=tempfile.mkdtemp()).cluster_text(1)); "
                "print(len(s.services), s.failover.instances[0].vrid)")
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               code], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                              env={**os.environ, "HOME": "/tmp"}, timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, "3 51"), done.stderr


def test_a_fwmark_service_with_fallback_quiescent_and_mixed_forwarding_comes_back():
    spec = parse_cluster(textwrap.dedent(FWMARK_YAML))
    result, back = round_trip(spec)
    assert [essence(s, BACK_AS) for s in spec.services] == [back_essence(s) for s in back.spec.services]
    web = back.spec.services[0].check
    # "a.b" literally: written as the pattern a\.b, which matches the same text (and only it).
    assert (web.start, web.path, web.host, web.status, web.receive, web.receive_regex) == (
        "down", "/h", "web.example.org", 204, r"a\.b", True)
    assert back.spec.services[1].check.port == 5353
    assert "ip_family inet6" in result.text and "virtual_server fwmark 7 {" in result.text
    assert any("services[0].check.receive" in w and r"'a\\.b'" in w for w in result.warnings)
    assert any("services[1].check.type" in w and "UDP" in w for w in result.warnings)


def test_real_server_ports_of_a_fwmark_service_are_left_out_with_a_warning():
    spec = parse_cluster("cluster: c\nservices:\n  - {name: f, fwmark: 1, forwarding: nat, "
                         "realservers: ['198.51.100.20:8080', 198.51.100.21]}\n")
    result, back = round_trip(spec)
    assert "real_server 198.51.100.20 {" in result.text
    assert [rs.port for rs in back.spec.services[0].realservers] == [0, 0]
    assert any("services[0].realservers" in w and "198.51.100.20:8080" in w for w in result.warnings)


def test_an_external_check_gets_ldirectords_four_arguments_and_off_is_bin_false():
    spec = parse_cluster(textwrap.dedent(SCRIPTS_YAML))
    result, back = round_trip(spec)
    assert 'misc_path "/usr/local/bin/probe --deep 192.0.2.33 25 198.51.100.20 25"' in result.text
    assert "misc_timeout 3" in result.text  # whole seconds, rounded up
    assert 'misc_path "/bin/false"' in result.text
    assert "enable_script_security" in result.text
    assert back.spec.services[0].check.type == "external"
    assert any("services[1].check.type" in w and "/bin/false" in w for w in result.warnings)


# -- keepalived itself ------------------------------------------------------------------------------------------

def _interfaces(spec) -> list[str]:
    names = {spec.sync.interface} if spec.sync else set()
    for vi in spec.failover.instances if spec.failover else ():
        names |= {vi.interface, *(t.name for t in vi.track_interfaces)}
    return sorted(names)


def keepalived_config_test(spec, tmp_path) -> subprocess.CompletedProcess:
    """``keepalived --config-test`` on the export, in a network namespace holding the file's interfaces.

    keepalived refuses a file naming an interface the host lacks; an unprivileged user and network
    namespace (unshare -rn) holds veth pairs with the file's names, so the test needs no root.
    """
    conf = tmp_path / "keepalived.conf"
    conf.write_text(export_keepalived(spec).text)
    names = _interfaces(spec)
    if len(names) % 2:
        names.append("lvsmailpad0")
    links = " && ".join(f"ip link add {a} type veth peer name {b}" for a, b in zip(names[::2], names[1::2]))
    script = f"{links + ' && ' if links else ''}exec keepalived --config-test -f {conf}"
    try:
        done = subprocess.run(["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        done = None  # no unshare(1)
    if done is None or done.returncode and done.stderr.startswith("unshare:"):
        # No user namespaces here (a locked-down CI container): every interface becomes the host's own
        # default-route interface (tracked interfaces are dropped: keepalived refuses to track an instance's
        # own), and keepalived checks the rest of the file on the host.
        host = _default_route_interface()
        if host is None:
            pytest.skip("no user namespaces (unshare -rn) and no default-route interface to stand in")
        conf.write_text(export_keepalived(_on_interface(spec, host)).text)
        done = subprocess.run(["keepalived", "--config-test", "-f", str(conf)], capture_output=True, text=True,
                              timeout=60)
    return done


def _default_route_interface() -> str | None:
    """The interface of the IPv4 default route (/proc/net/route), if any."""
    try:
        rows = [line.split() for line in Path("/proc/net/route").read_text().splitlines()[1:]]
    except OSError:
        return None
    return next((row[0] for row in rows if len(row) > 1 and row[1] == "00000000"), None)


def _on_interface(spec, name: str):
    """``spec`` with every interface it names replaced by ``name``, and no tracked interfaces."""
    from dataclasses import replace

    sync = replace(spec.sync, interface=name) if spec.sync else None
    failover = None
    if spec.failover:
        failover = replace(spec.failover, instances=tuple(
            replace(vi, interface=name, track_interfaces=()) for vi in spec.failover.instances))
    return replace(spec, sync=sync, failover=failover)


needs_keepalived = pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived is not installed")


@needs_keepalived
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_keepalived_accepts_every_example(path, tmp_path):
    done = keepalived_config_test(load_cluster(path), tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


@needs_keepalived
@pytest.mark.parametrize("mode,director", [("tun", 1), ("tun", 2), ("nat", 1), ("dr", 2)])
def test_keepalived_accepts_the_lab_directors_files(tmp_path, mode, director):
    done = keepalived_config_test(parse_cluster(lab_text(tmp_path, mode, director), "lab"), tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


@needs_keepalived
@pytest.mark.parametrize("text", [FWMARK_YAML, SCRIPTS_YAML], ids=["fwmark", "scripts"])
def test_keepalived_accepts_the_other_shapes(tmp_path, text):
    done = keepalived_config_test(parse_cluster(textwrap.dedent(text)), tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


@needs_keepalived
def test_the_fallback_without_namespaces_is_accepted_too(tmp_path):
    """Where unshare -rn is refused, the file is checked on the host's own interface: that path works as well."""
    host = _default_route_interface()
    if host is None:
        pytest.skip("this host has no default-route interface")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(export_keepalived(_on_interface(load_cluster(PAIR), host)).text)
    done = subprocess.run(["keepalived", "--config-test", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")


@needs_keepalived
def test_keepalived_config_test_does_catch_a_broken_file(tmp_path):
    """The check above means something: keepalived's --config-test fails an unknown keyword."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(export_keepalived(load_cluster(EXAMPLES[0])).text.replace("lb_algo", "lb_algorithm", 1))
    done = subprocess.run(["keepalived", "--config-test", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Unknown keyword 'lb_algorithm'" in done.stderr


# -- what keepalived cannot express -----------------------------------------------------------------------------

def test_vrrp_instances_sync_and_hooks():
    result = export_keepalived(load_cluster(PAIR), router_id="loadb1")
    text = result.text
    assert 'router_id "loadb1"' in text and "vrrp_version 3" in text
    assert "lvs_sync_daemon eth1 smtp id 1" in text
    assert "advert_int 0.1" in text and "preempt_delay 30" in text
    assert "eth1 weight -60" in text
    assert 'notify "/usr/local/sbin/lvsmail-notify"' in text  # the same script for all three: keepalived's notify
    assert 'notify_master "/bin/systemctl start roundcube-cache-warmer"' in text
    tracked = [w for w in result.warnings if "track_services" in w]
    assert len(tracked) == 2 and all("cannot be expressed in keepalived.conf" in w for w in tracked)
    assert text.count("! lvsmail: failover.instances[") == 2


def test_every_setting_keepalived_cannot_carry_is_a_comment_and_a_warning():
    spec = parse_cluster(textwrap.dedent("""\
        cluster: c
        vips: [192.0.2.33]
        maintenance_dir: /var/lib/lvsmail/maintenance
        alerts: {email: [ops@example.org], repeat: 600, webhook: "https://hooks.example.org/x"}
        services:
          - name: mail
            vip: 192.0.2.33
            port: 587
            realservers: [{address: 198.51.100.20, name: rs1}]
            check: {type: submission, rise: 3, via: vip, credentials: /etc/lvsmail/probe.secret, helo: d.example.org}
          - {name: web, vip: 192.0.2.33, port: 80, realservers: [198.51.100.20], check: {type: http, method: HEAD}}
        sync: {interface: eth1, role: master}
        """))
    result = export_keepalived(spec)
    expected = ["maintenance_dir", "alerts.repeat", "alerts.webhook", "services[0].check.rise",
                "services[0].check.via", "services[0].check.tls", "services[0].check.credentials",
                "services[1].check.method", "sync"]
    for path in expected:
        assert any(w.startswith(f"<string>: {path}: cannot be expressed") for w in result.warnings), path
        assert f"! lvsmail: {path} not expressed" in result.text, path
    assert any("services[0].name" in w and "'submission'" in w for w in result.warnings)
    assert any("rs1 are kept as comments" in w for w in result.warnings)
    assert 'helo_name "d.example.org"' in result.text
    assert "notification_email {" in result.text and "smtp_alert" in result.text
    assert len(result.warnings) == len(set(result.warnings))


def test_a_value_keepalived_would_read_differently_is_refused():
    spec = parse_cluster(textwrap.dedent("""\
        cluster: c
        vips: [192.0.2.33]
        services:
          - {name: web, vip: 192.0.2.33, port: 80, realservers: [198.51.100.20],
             check: {type: http, path: '/a"b'}}
        """))
    with pytest.raises(ConfigError) as caught:
        export_keepalived(spec)
    assert "services[0].check.path" in str(caught.value) and "double quote" in str(caught.value)


def test_regex_literal_escapes_only_what_a_pattern_would_read():
    import re

    for text in ("test page", "a.b (c)*", "x|y\\z", "price: $5?"):
        assert re.fullmatch(regex_literal(text), text)
    assert regex_literal("test page") == "test page"


# -- the command ------------------------------------------------------------------------------------------------

def test_cli_writes_the_file_atomically_and_warnings_to_stderr(cli_runner, tmp_path):
    out = tmp_path / "keepalived.conf"
    result = cli_runner.invoke(config, ["export-keepalived", str(PAIR), "-o", str(out), "--router-id", "loadb1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "track_services: cannot be expressed" in result.stderr
    assert import_keepalived(out).spec.services == import_keepalived(export_keepalived(load_cluster(PAIR),
                                                                                       router_id="loadb1").text
                                                                     ).spec.services
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keepalived.conf"]


def test_cli_prints_to_stdout(cli_runner):
    result = cli_runner.invoke(config, ["export-keepalived", str(EXAMPLES[0])])
    assert result.exit_code == 0
    assert result.stdout == export_keepalived(load_cluster(EXAMPLES[0])).text


def test_cli_exits_2_on_a_bad_cluster_file_and_writes_nothing(cli_runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: c\nservices:\n  - {name: a, port: 25}\n")
    out = tmp_path / "out.conf"
    result = cli_runner.invoke(config, ["export-keepalived", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert f"{bad}:3: services[0]: needs either vip" in result.stderr
    assert not out.exists()


def test_a_line_break_in_the_source_name_cannot_add_lines_to_either_output():
    from lvsmail.interop.export_ldirectord import export_ldirectord
    from lvsmail.interop.ldirectord import import_ldirectord

    spec = parse_cluster(EXAMPLES[0].read_text(), "x\nvirtual_server 192.0.2.99 80 {")
    keepalived, ldirectord = export_keepalived(spec).text, export_ldirectord(spec).text
    assert keepalived.startswith("! ") and "\nvirtual_server 192.0.2.99" not in keepalived
    assert "\nvirtual_server 192.0.2.99" not in ldirectord
    assert len(import_keepalived(keepalived).spec.services) == len(import_ldirectord(ldirectord).spec.services) == 2
