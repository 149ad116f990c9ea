"""ldirectord.cf import: the seed converts to the seed cluster file; nothing is dropped without a warning."""

import dataclasses
import textwrap
from pathlib import Path

import pytest

from lvsmail.commands.config import config
from lvsmail.config import ConfigError, load_cluster, parse_cluster
from lvsmail.interop.ldirectord import import_ldirectord
from lvsmail.spec import ClusterSpec, ServiceSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "directors" / "examples"
SEED_CF = EXAMPLES / "ldirectord-seed.cf"
SEED_YAML = EXAMPLES / "clustermail.yaml"


def imported(cf: str):
    """Import ldirectord.cf text given dedented."""
    return import_ldirectord(textwrap.dedent(cf))


def only_service(cf: str) -> ServiceSpec:
    """The single service an ldirectord.cf text imports to."""
    (service,) = imported(cf).spec.services
    return service


def errors(cf: str) -> list[str]:
    """The problem lines of an ldirectord.cf text that cannot be converted."""
    with pytest.raises(ConfigError) as caught:
        imported(cf)
    return str(caught.value).splitlines()


def line_of(path: Path, prefix: str) -> int:
    """1-based line number of the first line starting with ``prefix``."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(prefix):
            return number
    raise AssertionError(f"{prefix!r} not in {path}")


# -- acceptance: the seed ----------------------------------------------------------

def comparable(spec: ClusterSpec) -> dict:
    """Services keyed by kernel identity, with real servers in address order.

    Order of services and of real servers carries no meaning for IPVS; every
    other field, names included, is compared.
    """
    out = {}
    for s in spec.services:
        key = (s.family, s.protocol, s.vip, s.port, s.fwmark)
        out[key] = dataclasses.replace(s, realservers=tuple(sorted(s.realservers, key=lambda r: (r.address, r.port))))
    return out


def summary(spec: ClusterSpec) -> dict:
    """The fields the acceptance criterion names, for a readable diff when they differ."""
    return {key: (s.name, s.scheduler, s.persistent, s.netmask, s.forwarding,
                  [(r.address, r.port, r.weight, r.forwarding) for r in s.realservers],
                  s.check and (s.check.type, s.check.interval, s.check.timeout, s.check.path, s.check.receive))
            for key, s in comparable(spec).items()}


def test_seed_ldirectord_imports_to_the_same_services_as_the_seed_cluster_file():
    from_cf = import_ldirectord(str(SEED_CF)).spec
    from_yaml = load_cluster(SEED_YAML)
    assert len(from_cf.services) == 2
    assert summary(from_cf) == summary(from_yaml)
    assert comparable(from_cf) == comparable(from_yaml)
    assert set(from_cf.vips) <= set(from_yaml.vips)


def test_the_seed_comparison_notices_a_difference():
    from_yaml = load_cluster(SEED_YAML)
    for change in ({"persistent": 60}, {"scheduler": "wrr"}, {"netmask": "255.255.255.0"},
                   {"forwarding": "dr"}, {"check": dataclasses.replace(from_yaml.services[1].check, path="/")}):
        altered = dataclasses.replace(from_yaml, services=(
            from_yaml.services[0], dataclasses.replace(from_yaml.services[1], **change)))
        assert summary(altered) != summary(import_ldirectord(SEED_CF).spec), change


def test_seed_import_warns_about_autoreload_and_logfile_by_line():
    warnings = import_ldirectord(SEED_CF).warnings
    assert warnings == [
        f"{SEED_CF}:{line_of(SEED_CF, 'autoreload=')}: directive 'autoreload' cannot be expressed: "
        "lvsmail never watches the cluster file; reload the director after editing it",
        f"{SEED_CF}:{line_of(SEED_CF, 'logfile=')}: directive 'logfile' cannot be expressed: "
        "lvsmail logs to standard error (the journal under systemd); it has no log-file setting",
    ]


def test_cluster_name_is_the_file_stem():
    assert import_ldirectord(SEED_CF).spec.name == "ldirectord-seed"
    assert import_ldirectord(SEED_CF, name="clustermail").spec.name == "clustermail"


# -- the command -----------------------------------------------------------------

def test_cli_prints_yaml_that_parse_cluster_accepts_and_warnings_with_lines(cli_runner):
    result = cli_runner.invoke(config, ["import-ldirectord", str(SEED_CF)])
    assert result.exit_code == 0, result.output
    spec = parse_cluster(result.stdout, "stdout")
    assert comparable(spec) == comparable(load_cluster(SEED_YAML))
    assert result.stderr.splitlines() == [
        f"{SEED_CF}:7: directive 'autoreload' cannot be expressed: lvsmail never watches the cluster file; "
        "reload the director after editing it",
        f"{SEED_CF}:8: directive 'logfile' cannot be expressed: lvsmail logs to standard error "
        "(the journal under systemd); it has no log-file setting",
    ]


def test_cli_writes_the_output_file(cli_runner, tmp_path):
    out = tmp_path / "cluster.yaml"
    result = cli_runner.invoke(config, ["import-ldirectord", str(SEED_CF), "-o", str(out), "--name", "mail"])
    assert result.exit_code == 0 and result.stdout == ""
    assert load_cluster(out).name == "mail"


def test_cli_exits_2_on_broken_input(cli_runner, tmp_path):
    path = tmp_path / "broken.cf"
    path.write_text("virtual=192.0.2.33:25\n\treal=mail1.example.org:25 gate\n\tscheduler=wlc\nbogus=1\n")
    result = cli_runner.invoke(config, ["import-ldirectord", str(path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: real: 'mail1.example.org' is not an IP address; lvsmail never resolves host names, "
        "so write the address",
        f"{path}:4: bogus: is not an ldirectord directive",
    ]


# -- mapping rules ---------------------------------------------------------------

def test_negotiate_checks_use_negotiatetimeout_first():
    s = only_service("""\
        checktimeout=3
        negotiatetimeout=20
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
        """)
    assert (s.check.type, s.check.timeout) == ("smtp", 20.0)


def test_connect_checks_use_checktimeout_first():
    s = only_service("""\
        checktimeout=3
        negotiatetimeout=20
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            checktype=connect
        """)
    assert (s.check.type, s.check.timeout) == ("connect", 3.0)


def test_block_timeout_beats_global_and_checktimeout_stands_in_for_negotiate():
    s = only_service("""\
        negotiatetimeout=20
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            checktimeout=7
        """)
    assert s.check.timeout == 7.0


def test_ldirectord_defaults_when_nothing_is_set():
    s = only_service("""\
        virtual=192.0.2.33:143
            real=198.51.100.20:143 gate
        """)
    assert (s.name, s.scheduler, s.quiescent, s.forwarding) == ("imap", "wrr", False, "dr")
    assert (s.check.type, s.check.interval, s.check.timeout, s.check.fall) == ("imap", 10.0, 30.0, 1)


def test_failurecount_maps_to_fall_and_quiescent_to_a_boolean():
    s = only_service("""\
        failurecount=3
        quiescent=yes
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
        """)
    assert (s.check.fall, s.quiescent) == (3, True)


def test_forwarding_methods_and_weights():
    s = only_service("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:25 masq 5
            real=198.51.100.21:2525 masq
            real=198.51.100.22 gate 0
        """)
    assert s.forwarding == "nat"
    assert [(r.address, r.port, r.weight, r.forwarding) for r in s.realservers] == [
        ("198.51.100.20", 25, 5, "nat"), ("198.51.100.21", 2525, 1, "nat"), ("198.51.100.22", 25, 0, "dr")]


def test_gate_real_port_is_replaced_by_the_virtual_port_with_a_warning():
    result = imported("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:2525 gate
        """)
    assert result.spec.services[0].realservers[0].port == 25
    assert result.warnings == ["<string>:2: directive 'real' imported with a change: real server port 2525 "
                               "replaced by the virtual port 25: dr forwarding cannot change ports "
                               "(ldirectord does the same)"]


def test_fwmark_virtual_becomes_a_fwmark_service():
    result = imported("""\
        virtual=1
            real=198.51.100.20 gate
            real=198.51.100.21 gate
            protocol=fwm
            checktype=connect
            checkport=80
        """)
    s = result.spec.services[0]
    assert (s.name, s.fwmark, s.family, s.vip, s.check.type, s.check.port) == ("fwmark-1", 1, "inet", None,
                                                                               "connect", 80)
    assert [r.port for r in s.realservers] == [0, 0]
    assert any("only fwmark services" in w for w in result.warnings)


def test_virtual6_and_fallback6():
    s = only_service("""\
        fallback6=[2001:db8::1]:80
        virtual6=[2001:db8::33]:80
            real6=[2001:db8::20]:80 ipip
            service=http
            request="/health"
        """)
    assert (s.family, s.vip, s.forwarding, s.check.path) == ("inet6", "2001:db8::33", "tun", "/health")
    assert (s.fallback.address, s.fallback.port, s.fallback.forwarding) == ("2001:db8::1", 80, "dr")


def test_global_fallback_applies_to_each_virtual_with_its_port():
    spec = imported("""\
        fallback=127.0.0.1
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
        virtual=192.0.2.33:80
            real=198.51.100.20:80 gate
        """).spec
    assert [(s.fallback.address, s.fallback.port) for s in spec.services] == [("127.0.0.1", 25), ("127.0.0.1", 80)]


def test_real_server_range_expands():
    s = only_service("""\
        virtual=192.0.2.33:25
            real=198.51.100.20->198.51.100.23:25 gate
        """)
    assert [r.address for r in s.realservers] == [f"198.51.100.{n}" for n in range(20, 24)]


def test_http_request_gets_a_leading_slash_and_virtualhost_becomes_host():
    s = only_service("""\
        virtual=192.0.2.33:80
            real=198.51.100.20:80 gate
            request="solicitud.html"
            receive="test page"
            virtualhost=www.example.org
            httpmethod=get
        """)
    assert (s.check.path, s.check.receive, s.check.receive_regex, s.check.host, s.check.method) == (
        "/solicitud.html", "test page", False, "www.example.org", "GET")


def test_receive_with_regex_characters_is_imported_as_a_regex():
    s = only_service("""\
        virtual=192.0.2.33:80
            real=198.51.100.20:80 gate
            receive="^OK.*"
        """)
    assert (s.check.receive, s.check.receive_regex) == ("^OK.*", True)


def test_pop_and_pops_become_pop3_checks_and_names_are_unique():
    spec = imported("""\
        virtual=192.0.2.33:110
            real=198.51.100.20:110 gate
        virtual=192.0.2.34:110
            real=198.51.100.20:110 gate
        virtual=192.0.2.33:995
            real=198.51.100.20:995 gate
        """).spec
    assert [(s.name, s.check.type) for s in spec.services] == [("pop3", "pop3"), ("pop3-2", "pop3"),
                                                               ("pop3s", "pop3s")]
    assert spec.vips == ("192.0.2.33", "192.0.2.34")


def test_service_without_an_lvsmail_check_becomes_connect_with_a_warning():
    result = imported("""\
        virtual=192.0.2.33:21
            real=198.51.100.20:21 gate
            service=ftp
        """)
    assert result.spec.services[0].check.type == "connect"
    assert result.warnings == ["<string>:3: directive 'service' imported with a change: lvsmail has no ftp check; "
                               "imported as a connect check on the same port"]


def test_service_none_never_checks():
    s = only_service("""\
        virtual=192.0.2.33:8080
            real=198.51.100.20:8080 gate
        """)
    assert (s.name, s.check.type) == ("tcp-8080", "on")


# -- warnings: nothing dropped silently -------------------------------------------

def warnings_for(cf: str) -> list[str]:
    """The warnings of an ldirectord.cf text that converts."""
    return imported(cf).warnings


def test_login_and_passwd_warn_that_credentials_belong_in_a_file():
    found = warnings_for("""\
        virtual=192.0.2.33:143
            real=198.51.100.20:143 gate
            login="probe"
            passwd="hunter2"
        """)
    assert [w.split(":")[1] for w in found] == ["3", "4"]
    assert all("root-only file" in w and "check.credentials" in w and "hunter2" not in w for w in found)
    assert "directive 'login' cannot be expressed" in found[0] and "directive 'passwd'" in found[1]


def test_ping_checktype_warns_and_becomes_connect():
    result = imported("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            checktype=ping
        """)
    assert result.spec.services[0].check.type == "connect"
    assert result.warnings == ["<string>:3: directive 'checktype' imported with a change: lvsmail has no ICMP "
                               "check; imported as a connect check on the service port"]


def test_per_real_request_receive_override_warns():
    found = warnings_for("""\
        virtual=192.0.2.33:80
            real=198.51.100.20:80 gate 1 "/a.html", "alive"
        """)
    assert found == ["<string>:2: directive 'real' cannot be expressed: per-real-server request/receive "
                     "overrides are not supported; this real server gets the service's check"]


def test_global_emailalert_and_maintenancedir_become_cluster_settings():
    result = imported("""\
        emailalert="ops@example.org, noc@example.org"
        emailalertfreq=600
        smtp=127.0.0.1:2525
        maintenancedir=/etc/ha.d/maintenance
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
        """)
    a = result.spec.alerts
    assert (a.email, a.repeat, a.smtp_host, a.smtp_port) == (("ops@example.org", "noc@example.org"), 600,
                                                             "127.0.0.1", 2525)
    assert result.spec.maintenance_dir == "/etc/ha.d/maintenance"
    assert result.warnings == []


def test_per_virtual_emailalert_warns_that_alerts_are_cluster_wide():
    found = warnings_for("""\
        emailalert="ops@example.org"
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            emailalertfreq=60
        """)
    assert len(found) == 1
    assert "directive 'emailalertfreq' cannot be expressed: lvsmail's alerts are cluster-wide" in found[0]


def test_directive_with_no_effect_for_the_check_type_warns():
    found = warnings_for("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            request="/index.html"
        """)
    assert found == ["<string>:3: directive 'request' cannot be expressed: it has no effect with this "
                     "service's checktype/service (ldirectord ignores it too)"]


def test_per_virtual_checkinterval_without_fork_warns_about_the_change():
    result = imported("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            checkinterval=5
        """)
    assert result.spec.services[0].check.interval == 5.0
    assert result.warnings == ["<string>:3: directive 'checkinterval' imported with a change: ldirectord ignores "
                               "a per-virtual checkinterval unless fork=yes; lvsmail uses it for this service"]


def test_netmask_without_persistent_warns():
    result = imported("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            netmask=255.255.255.0
        """)
    assert result.spec.services[0].netmask == ""
    assert "directive 'netmask' cannot be expressed" in result.warnings[0]


# -- broken input -----------------------------------------------------------------

def test_unknown_directive_is_an_error():
    assert errors("checktimeout=5\nfoo=bar\n") == ["<string>:2: foo: is not an ldirectord directive"]


def test_blank_line_ends_a_virtual_block_as_in_ldirectord():
    found = errors("virtual=192.0.2.33:25\n\treal=198.51.100.20:25 gate\n\n\tscheduler=wlc\n")
    assert found == ["<string>:4: scheduler: indented line outside a virtual block "
                     "(a blank or unindented line ends a block)"]


def test_real6_in_an_ipv4_block_is_an_error():
    found = errors("virtual=192.0.2.33:25\n\treal6=[2001:db8::20]:25 gate\n")
    assert found == ["<string>:2: real6: use real in a virtual block"]


def test_missing_forwarding_method_is_an_error():
    assert errors("virtual=192.0.2.33:25\n\treal=198.51.100.20:25\n") == [
        "<string>:2: real: '198.51.100.20:25': expected address[:port] gate|masq|ipip [weight]"]


def test_lvsmail_rules_report_ldirectord_lines():
    found = errors("virtual=192.0.2.33:25\n\treal=198.51.100.20:25 gate\n\tscheduler=fancy\n")
    assert found == ["<string>:3: services[0].scheduler: 'fancy' is not a scheduler; expected one of "
                     "rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos"]


def test_lvsmail_rules_inside_real_servers_and_checks_point_at_their_directive():
    found = errors("""\
        virtual=192.0.2.33:25
            real=198.51.100.20:25 gate
            real=198.51.100.21:25 gate 70000
            checktype=external
            checkcommand="check-it"
        """)
    assert found == [
        "<string>:3: services[0].realservers[1].weight: must be between 0 and 65535, got 70000",
        "<string>:5: services[0].check.command: must start with an absolute program path, got 'check-it'",
    ]


def test_every_import_problem_is_reported_at_once():
    found = errors("""\
        quiescent=maybe
        virtual=192.0.2.33:25
            real=198.51.100.20:25 tunnel
            checktype=sometimes
        virtual=example.org:80
            real=198.51.100.20:80 gate
        """)
    assert [line.split(":")[1] for line in found] == ["1", "3", "4", "5"]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        import_ldirectord(tmp_path / "none.cf")
    assert "cannot read ldirectord.cf: No such file or directory" in str(caught.value)
