"""Cluster-file loader: good files load, and each kind of mistake is reported with file:line:key."""

import dataclasses
import ipaddress
import re
import textwrap
from pathlib import Path

import pytest

from lvsmail.commands.config import config
from lvsmail.config import ConfigError, Problem, dump_cluster, load_cluster, parse_cluster
from lvsmail.spec import SCHEDULERS, CheckSpec, ClusterSpec, RealServerSpec, ServiceSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "directors" / "examples"

HEAD = """\
cluster: test
vips: [192.0.2.33, "2001:db8::33"]
services:
"""


def cluster(services: str) -> str:
    """A cluster file with the standard head and the given (dedented) services block."""
    return HEAD + textwrap.indent(textwrap.dedent(services), "  ")


def problems(text: str) -> list[str]:
    """The problem lines a text produces (it must be refused)."""
    with pytest.raises(ConfigError) as caught:
        parse_cluster(text, "cluster.yaml")
    return str(caught.value).splitlines()


def one_problem(text: str) -> str:
    """The single problem a text produces."""
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def load(services: str) -> ClusterSpec:
    """Parse services that must be valid."""
    return parse_cluster(cluster(services), "cluster.yaml")


# -- good files ------------------------------------------------------------------

def test_seed_example_loads_with_the_seed_settings():
    spec = load_cluster(EXAMPLES / "clustermail.yaml")
    assert spec.name == "clustermail"
    assert spec.vips == ("192.0.2.33", "2001:db8::33")
    assert [(s.name, s.protocol, s.port) for s in spec.services] == [("smtp", "tcp", 25), ("http", "tcp", 80)]
    for s in spec.services:
        assert (s.vip, s.scheduler, s.persistent, s.netmask, s.forwarding, s.quiescent) == (
            "192.0.2.33", "wlc", 120, "255.255.255.255", "tun", False)
        assert sorted(rs.address for rs in s.realservers) == [
            "198.51.100.20", "198.51.100.32", "198.51.100.35", "198.51.100.36"]
        assert {(rs.port, rs.weight, rs.forwarding) for rs in s.realservers} == {(s.port, 1, "tun")}
    smtp, http = spec.services
    assert smtp.check == CheckSpec(type="smtp", interval=2.0, timeout=10.0)
    assert http.check == CheckSpec(type="http", interval=2.0, timeout=10.0, path="/solicitud.html",
                                   receive="test page")


def test_dualstack_example_loads_with_a_mixed_family_tunnel_service():
    spec = load_cluster(EXAMPLES / "clustermail-dualstack.yaml")
    smtp6 = spec.services[2]
    assert (smtp6.family, smtp6.vip, smtp6.netmask, smtp6.forwarding) == ("inet6", "2001:db8::33", "128", "tun")
    assert all(ipaddress.ip_address(rs.address).version == 4 for rs in smtp6.realservers)


def test_commented_ipv6_service_in_the_seed_example_is_valid_once_uncommented():
    text = (EXAMPLES / "clustermail.yaml").read_text()
    start = text.index("  # - name: smtp6")
    spec = parse_cluster(text[:start] + re.sub(r"^  # ", "  ", text[start:], flags=re.M))
    assert [(s.name, s.family) for s in spec.services][-1] == ("smtp6", "inet6")


def test_examples_use_only_documentation_or_loopback_addresses():
    documentation = [ipaddress.ip_network(n) for n in
                     ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "127.0.0.0/8")]
    found = 0
    for path in EXAMPLES.iterdir():
        for text in re.findall(r"[0-9A-Fa-f:.]*[.:][0-9A-Fa-f:.]+", path.read_text()):
            try:
                addr = ipaddress.ip_address(text.strip(".:"))
            except ValueError:
                continue
            if str(addr).startswith("255."):
                continue  # a persistence netmask, not an address
            found += 1
            assert any(addr in net for net in documentation), f"{path.name}: {addr}"
    assert found > 10


def test_defaults_fill_what_the_file_leaves_out():
    s = load("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          realservers: [198.51.100.20]
        """).services[0]
    assert (s.protocol, s.scheduler, s.persistent, s.netmask, s.forwarding, s.quiescent, s.check) == (
        "tcp", "wlc", 0, "", "dr", False, None)
    assert s.realservers == (RealServerSpec(address="198.51.100.20", port=25, weight=1, forwarding="dr"),)


def test_validated_spec_is_immutable():
    spec = load_cluster(EXAMPLES / "clustermail.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.services[0].port = 26


def test_addresses_are_normalised_to_compressed_form():
    spec = parse_cluster(textwrap.dedent("""\
        cluster: test
        vips: ["2001:DB8:0:0::33"]
        services:
          - {name: smtp, vip: "2001:db8::0:33", port: 25, realservers: ["[2001:DB8::0020]:25"]}
        """))
    assert spec.vips == ("2001:db8::33",)
    assert spec.services[0].realservers[0].address == "2001:db8::20"


def test_forwarding_aliases_are_normalised():
    s = load("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          forwarding: ipip
          realservers:
            - 198.51.100.20
            - {address: 198.51.100.21, forwarding: gate}
            - {address: 198.51.100.22, port: 2525, forwarding: masq}
        """).services[0]
    assert s.forwarding == "tun"
    assert [(rs.forwarding, rs.port) for rs in s.realservers] == [("tun", 25), ("dr", 25), ("nat", 2525)]


def test_realserver_shorthands():
    s = load("""\
        - name: smtp
          vip: "2001:db8::33"
          port: 25
          forwarding: tun
          realservers: ["2001:db8::20", "[2001:db8::21]:25", 198.51.100.20, "198.51.100.21:25"]
        """).services[0]
    assert [(rs.address, rs.port) for rs in s.realservers] == [
        ("2001:db8::20", 25), ("2001:db8::21", 25), ("198.51.100.20", 25), ("198.51.100.21", 25)]


def test_fwmark_service_defaults_real_ports_to_zero():
    s = load("""\
        - name: web
          fwmark: 7
          family: inet6
          realservers: ["2001:db8::20"]
          check: {type: connect, port: 80}
        """).services[0]
    assert (s.fwmark, s.family, s.vip, s.protocol, s.port) == (7, "inet6", None, None, None)
    assert s.realservers[0].port == 0
    assert s.label == "FWM 7 IPv6"


def test_check_type_on_is_read_as_typed_not_as_a_yaml_boolean():
    s = load("""\
        - {name: smtp, vip: 192.0.2.33, port: 25, check: {type: on}}
        """).services[0]
    assert s.check.type == "on"


def test_implicit_tls_types_default_to_implicit_and_submission_to_starttls():
    spec = load("""\
        - {name: imaps, vip: 192.0.2.33, port: 993, check: {type: imaps, credentials: /etc/lvsmail/imap.cred}}
        - {name: submission, vip: 192.0.2.33, port: 587, check: {type: submission}}
        """)
    assert [s.check.tls for s in spec.services] == ["implicit", "starttls"]


def test_timeouts_are_read():
    spec = parse_cluster("cluster: t\ntimeouts: {tcp: 900, udp: 300}\nservices: []\n")
    assert (spec.timeouts.tcp, spec.timeouts.tcpfin, spec.timeouts.udp) == (900, None, 300)


def test_load_cluster_records_the_path_as_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: t\nservices: []\n")
    assert load_cluster(path).source == str(path)


# -- one named test per failure mode --------------------------------------------

def test_unknown_key_names_file_line_path_and_the_valid_keys():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          check:
            type: smtp
            intervall: 2
        """)
    assert one_problem(text) == (
        "cluster.yaml:9: services[0].check.intervall: unknown key; expected one of type, interval, timeout, "
        "rise, fall, start, port, via, helo, credentials, tls, verify, ca_file, server_name (did you mean 'interval'?)")


def test_unknown_top_level_key():
    assert one_problem("cluster: t\nservices: []\ndirectors: 2\n").startswith(
        "cluster.yaml:3: directors: unknown key; "
        "expected one of cluster, vips, timeouts, maintenance_dir, alerts, services")


def test_bad_scheduler_exact_message():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          scheduler: wlcc
        """)
    assert one_problem(text) == (
        "cluster.yaml:7: services[0].scheduler: 'wlcc' is not a scheduler; expected one of "
        + ", ".join(SCHEDULERS))


def test_duplicate_yaml_key_is_an_error_not_last_one_wins():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          port: 26
        """)
    assert one_problem(text) == "cluster.yaml:7: services[0].port: duplicate key (first given at line 6)"


def test_wrong_type_says_what_was_expected_and_what_was_found():
    text = cluster("""\
        - {name: smtp, vip: 192.0.2.33, port: 25, persistent: abc}
        """)
    assert one_problem(text) == "cluster.yaml:4: services[0].persistent: expected an integer, got 'abc'"


def test_quoted_number_is_not_an_integer():
    text = cluster("""\
        - {name: smtp, vip: 192.0.2.33, port: "25"}
        """)
    assert one_problem(text).endswith("services[0].port: expected an integer, got '25' "
                                      "(write the number without quotes)")


def test_boolean_must_be_a_yaml_boolean():
    text = cluster("""\
        - {name: smtp, vip: 192.0.2.33, port: 25, quiescent: "yes"}
        """)
    assert one_problem(text).endswith("services[0].quiescent: expected true or false, got 'yes'")


def test_out_of_range_integer():
    text = cluster("""\
        - {name: smtp, vip: 192.0.2.33, port: 70000}
        """)
    assert one_problem(text).endswith("services[0].port: must be between 1 and 65535, got 70000")


def test_fwmark_and_vip_together_is_an_error():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          fwmark: 1
        """)
    assert one_problem(text).startswith("cluster.yaml:5: services[0].vip: cannot be combined with fwmark")


def test_service_needs_vip_or_fwmark():
    assert one_problem(cluster("- name: smtp\n")) == (
        "cluster.yaml:4: services[0]: needs either vip (with port) or fwmark")


def test_vip_service_needs_a_port():
    assert "missing required key 'port'" in one_problem(cluster("- {name: smtp, vip: 192.0.2.33}\n"))


def test_vip_must_be_listed_in_vips():
    text = cluster("- {name: smtp, vip: 203.0.113.9, port: 25}\n")
    assert one_problem(text).endswith("services[0].vip: 203.0.113.9 is not listed in vips "
                                      "(the addresses the director pair owns)")


def test_realserver_family_must_match_vip_unless_tun():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          realservers: ["2001:db8::20"]
        """)
    assert one_problem(text) == ("cluster.yaml:7: services[0].realservers[0]: 2001:db8::20 is IPv6 but the "
                                 "service is IPv4; mixing families needs forwarding tun")


def test_mixed_family_is_allowed_with_tun():
    s = load("""\
        - {name: smtp, vip: 192.0.2.33, port: 25, forwarding: tun, realservers: ["2001:db8::20"]}
        """).services[0]
    assert s.realservers[0].address == "2001:db8::20"


def test_duplicate_real_server_in_a_service():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          realservers:
            - 198.51.100.20
            - 198.51.100.20:25
        """)
    assert one_problem(text) == ("cluster.yaml:9: services[0].realservers[1]: duplicate real server "
                                 "198.51.100.20:25 (first at line 8)")


def test_duplicate_service_name():
    text = cluster("""\
        - {name: smtp, vip: 192.0.2.33, port: 25}
        - {name: smtp, vip: 192.0.2.33, port: 587}
        """)
    assert one_problem(text) == "cluster.yaml:5: services[1].name: duplicate service name 'smtp' (first at line 4)"


def test_duplicate_service_identity():
    text = cluster("""\
        - {name: smtp, vip: 192.0.2.33, port: 25}
        - {name: mail, vip: 192.0.2.33, port: 25}
        """)
    assert one_problem(text) == ("cluster.yaml:5: services[1]: TCP 192.0.2.33:25 is already defined by "
                                 "service 'smtp' (line 4)")


def test_non_contiguous_netmask_is_refused():
    text = cluster("- {name: smtp, vip: 192.0.2.33, port: 25, persistent: 60, netmask: 255.0.255.0}\n")
    assert one_problem(text).endswith("services[0].netmask: '255.0.255.0' is not a contiguous IPv4 netmask "
                                      "like 255.255.255.0")


def test_ipv6_netmask_is_a_prefix_length():
    s = load("""\
        - {name: smtp, vip: "2001:db8::33", port: 25, persistent: 60, netmask: 64}
        """).services[0]
    assert s.netmask == "64"
    text = cluster('- {name: smtp, vip: "2001:db8::33", port: 25, persistent: 60, netmask: 129}\n')
    assert "expected an IPv6 prefix length between 1 and 128, got '129'" in one_problem(text)


def test_netmask_without_persistence_is_refused():
    text = cluster("- {name: smtp, vip: 192.0.2.33, port: 25, netmask: 255.255.255.0}\n")
    assert "has no effect without persistent" in one_problem(text)


def test_nat_on_a_fwmark_service_may_keep_the_client_port():
    s = load("- {name: web, fwmark: 1, forwarding: nat, realservers: [198.51.100.20, 198.51.100.21:8080]}\n")
    assert [(rs.port, rs.forwarding) for rs in s.services[0].realservers] == [(0, "nat"), (8080, "nat")]


def test_dr_and_tun_cannot_change_the_port():
    text = cluster("- {name: smtp, vip: 192.0.2.33, port: 25, realservers: [198.51.100.20:2525]}\n")
    assert "port 2525 differs from the service port 25, but dr forwarding cannot change ports" in one_problem(text)


def test_host_names_are_refused():
    text = cluster("- {name: smtp, vip: 192.0.2.33, port: 25, realservers: [mail1.example.org]}\n")
    assert one_problem(text).endswith("'mail1.example.org' is not an IP address (lvsmail never resolves host names)")


def test_check_key_not_valid_for_its_type_names_the_type():
    text = cluster("- {name: smtp, vip: 192.0.2.33, port: 25, check: {type: smtp, receive: 220}}\n")
    assert one_problem(text).endswith("services[0].check.receive: does not apply to check type 'smtp' "
                                      "(only to http, https)")


def test_command_on_an_http_check_is_refused():
    text = cluster("- {name: http, vip: 192.0.2.33, port: 80, check: {type: http, command: /bin/true}}\n")
    assert "check.command: does not apply to check type 'http' (only to external)" in one_problem(text)


def test_external_check_needs_a_command():
    text = cluster("- {name: x, vip: 192.0.2.33, port: 25, check: {type: external}}\n")
    assert one_problem(text).endswith("services[0].check: missing required key 'command' (external checks run it)")


def test_bad_check_type():
    text = cluster("- {name: x, vip: 192.0.2.33, port: 25, check: {type: ping}}\n")
    assert "check.type: 'ping' is not a check type; expected one of connect, smtp" in one_problem(text)


def test_inline_password_is_refused_pointing_to_credentials():
    text = cluster("""\
        - name: imap
          vip: 192.0.2.33
          port: 143
          check: {type: imap, password: hunter2}
        """)
    message = one_problem(text)
    assert message.startswith("cluster.yaml:7: services[0].check.password: not accepted:")
    assert "credentials: /path/to/file" in message and "hunter2" not in message


def test_credentials_must_be_a_path_not_the_secret():
    text = cluster("- {name: imap, vip: 192.0.2.33, port: 143, check: {type: imap, credentials: 'user:pw'}}\n")
    message = one_problem(text)
    assert "must be the absolute path of a root-only file" in message and "user:pw" not in message


def test_mailbox_needs_credentials():
    text = cluster("- {name: imap, vip: 192.0.2.33, port: 143, check: {type: imap, mailbox: INBOX}}\n")
    assert "check.mailbox: needs credentials" in one_problem(text)


def test_tls_options_need_tls():
    text = cluster("- {name: smtp, vip: 192.0.2.33, port: 25, check: {type: smtp, verify: false}}\n")
    assert "check.verify: applies only with tls: starttls or implicit" in one_problem(text)


def test_tls_mode_must_suit_the_type():
    text = cluster("- {name: s, vip: 192.0.2.33, port: 465, check: {type: smtps, tls: starttls}}\n")
    assert "'starttls' is not a TLS mode for smtps; expected one of implicit" in one_problem(text)


def test_check_via_vip_needs_dr_or_tun():
    text = cluster("""\
        - {name: s, vip: 192.0.2.33, port: 25, forwarding: nat, check: {type: smtp, via: vip}}
        """)
    assert "check.via: checks through the VIP need dr or tun forwarding" in one_problem(text)


def test_receive_regex_must_compile():
    text = cluster("""\
        - {name: w, vip: 192.0.2.33, port: 80, check: {type: http, receive: "ok(", receive_regex: true}}
        """)
    assert "check.receive: is not a valid regular expression" in one_problem(text)


def test_head_request_cannot_match_a_body():
    text = cluster("- {name: w, vip: 192.0.2.33, port: 80, check: {type: http, method: HEAD, receive: ok}}\n")
    assert "a HEAD response has no body" in one_problem(text)


def test_http_path_must_start_with_a_slash():
    text = cluster("- {name: w, vip: 192.0.2.33, port: 80, check: {type: http, path: solicitud.html}}\n")
    assert "check.path: must start with '/', got 'solicitud.html'" in one_problem(text)


def test_yaml_syntax_error_reports_its_line():
    text = "cluster: test\nservices:\n  - name: smtp\n    vip: [192.0.2.33\n    port: 25\n"
    message = one_problem(text)
    assert re.match(r"cluster\.yaml:[45]: YAML syntax error: ", message), message


def test_yaml_merge_keys_are_refused():
    text = "cluster: t\nbase: &b {port: 25}\nservices: []\n<<: *b\n"
    assert any("merge keys (<<) are not supported" in p for p in problems(text))


def test_empty_file():
    assert one_problem("") == "cluster.yaml: the file is empty; expected a mapping with cluster, vips and services"


def test_top_level_must_be_a_mapping():
    assert one_problem("- smtp\n") == "cluster.yaml:1: the top level must be a mapping with cluster, vips and services"


def test_missing_required_top_level_keys():
    assert problems("vips: []\n") == ["cluster.yaml:1: missing required key 'cluster'",
                                      "cluster.yaml:1: missing required key 'services'"]


def test_file_not_found_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_cluster(tmp_path / "missing.yaml")
    assert caught.value.problems == [Problem(str(tmp_path / "missing.yaml"), None, "",
                                             "cannot read the cluster file: No such file or directory")]


def test_timeouts_must_be_positive():
    assert one_problem("cluster: t\ntimeouts: {tcp: 0}\nservices: []\n") == (
        "cluster.yaml:2: timeouts.tcp: must be at least 1, got 0")


def test_every_problem_is_reported_at_once_in_line_order():
    text = cluster("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          scheduler: wlcc
          realservers: [198.51.100.20, 198.51.100.20]
        - name: smtp
          vip: 192.0.2.33
          port: 25
          port: 26
          check: {type: smtp, intervall: 2}
        """)
    found = problems(text)
    assert [line.split(":")[1] for line in found] == ["7", "8", "12", "13"]
    assert "scheduler" in found[0] and "duplicate real server" in found[1]
    assert "duplicate key" in found[2] and "intervall" in found[3]


def test_config_error_lists_problem_objects():
    with pytest.raises(ConfigError) as caught:
        parse_cluster(cluster("- {name: smtp, vip: 192.0.2.33, port: 25, scheduler: x}\n"), "c.yaml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.path) == ("c.yaml", 4, "services[0].scheduler")


# -- dump_cluster ----------------------------------------------------------------

RICH = cluster("""\
    - name: smtp
      vip: 192.0.2.33
      port: 25
      scheduler: wrr
      persistent: 300
      netmask: 255.255.255.0
      forwarding: tun
      quiescent: true
      fallback: 127.0.0.1:25
      realservers:
        - {address: 198.51.100.20, weight: 3, name: rs1}
        - {address: 198.51.100.21, forwarding: dr}
        - "2001:db8::20"
      check: {type: smtp, interval: 1.5, timeout: 4, rise: 2, fall: 3, start: down, helo: lb.example.org,
              tls: starttls, verify: false, via: vip, port: 10025}
    - name: web6
      vip: "2001:db8::33"
      port: 443
      persistent: 60
      netmask: 48
      forwarding: nat
      realservers: ["[2001:db8::20]:8443"]
      check: {type: https, path: /health, host: www.example.org, status: 204, receive: "o+k",
              receive_regex: true, server_name: www.example.org, ca_file: /etc/ssl/ca.pem}
    - name: marked
      fwmark: 4294967295
      family: inet6
      scheduler: sh
      realservers: ["2001:db8::21", {address: "2001:db8::22", port: 80, forwarding: nat}]
      check: {type: external, command: /usr/local/bin/check-foo --fast}
    - name: dns
      vip: 192.0.2.33
      protocol: udp
      port: 53
      realservers: []
      check: {type: "off"}
    - name: imap
      vip: 192.0.2.33
      port: 143
      check: {type: imap, credentials: /etc/lvsmail/imap.cred, mailbox: Probe}
    """) + "timeouts: {tcp: 900, tcpfin: 120}\n"


@pytest.mark.parametrize("text", [
    RICH,
    (EXAMPLES / "clustermail.yaml").read_text(),
    (EXAMPLES / "clustermail-dualstack.yaml").read_text(),
], ids=["rich", "clustermail", "dualstack"])
def test_dump_round_trips(text):
    spec = parse_cluster(text, "in.yaml")
    again = parse_cluster(dump_cluster(spec), "out.yaml")
    assert dataclasses.replace(again, source=spec.source) == spec


def test_dump_leaves_defaults_out_and_uses_shorthands():
    dumped = dump_cluster(load("""\
        - name: smtp
          vip: 192.0.2.33
          port: 25
          scheduler: wlc
          forwarding: dr
          realservers: [{address: 198.51.100.20, port: 25, weight: 1}]
          check: {type: smtp, interval: 2, rise: 1}
        """))
    assert dumped == textwrap.dedent("""\
        cluster: test
        vips:
        - 192.0.2.33
        - 2001:db8::33
        services:
        - name: smtp
          vip: 192.0.2.33
          port: 25
          realservers:
          - 198.51.100.20
          check:
            type: smtp
        """)


def test_dump_of_a_hand_built_spec_round_trips():
    spec = ClusterSpec(name="lab", vips=("192.0.2.1",), services=(ServiceSpec(
        name="pop3s", family="inet", vip="192.0.2.1", protocol="tcp", port=995,
        realservers=(RealServerSpec("198.51.100.9", 995, weight=0),),
        check=CheckSpec(type="pop3s", tls="implicit", timeout=3.0)),))
    assert dataclasses.replace(parse_cluster(dump_cluster(spec)), source=spec.source) == spec


# -- lvsmail config validate --------------------------------------------------------

def test_cli_validate_reports_services_and_real_servers(cli_runner):
    result = cli_runner.invoke(config, ["validate", str(EXAMPLES / "clustermail.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{EXAMPLES / 'clustermail.yaml'}: ok, 2 services, 4 real servers\n"


def test_cli_validate_prints_every_problem_and_exits_2(cli_runner, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(cluster("- {name: smtp, vip: 192.0.2.33, port: 25, scheduler: x, quiescent: 1}\n"))
    result = cli_runner.invoke(config, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}:4: services[0].") for line in lines)
    assert result.stdout == ""


def test_alerts_and_maintenance_dir_are_read_and_round_trip():
    from lvsmail.config import dump_cluster, parse_cluster

    text = ("cluster: t\nmaintenance_dir: /etc/lvsmail/maintenance\nalerts:\n  email: [postmaster@example.org]\n"
            "  smtp: \"[127.0.0.1]:2525\"\n  repeat: 600\n  webhook: https://hooks.example.org/lvs\nservices: []\n")
    spec = parse_cluster(text)
    assert spec.maintenance_dir == "/etc/lvsmail/maintenance"
    a = spec.alerts
    assert (a.email, a.smtp_host, a.smtp_port, a.repeat, a.webhook) == (
        ("postmaster@example.org",), "127.0.0.1", 2525, 600, "https://hooks.example.org/lvs")
    assert parse_cluster(dump_cluster(spec)).alerts == a


def test_bad_alerts_are_each_reported():
    from lvsmail.config import ConfigError, parse_cluster

    try:
        parse_cluster("cluster: t\nmaintenance_dir: maint\n"
                      "alerts:\n  email: [nobody]\n  webhook: ftp://x\nservices: []\n")
    except ConfigError as exc:
        text = str(exc)
    assert "<string>:2: maintenance_dir: 'maint' is not an absolute path" in text
    assert "alerts.email[0]: 'nobody' is not a mail address" in text
    assert "alerts.webhook: 'ftp://x' is not an http(s) URL" in text


def test_submission_check_accepts_credentials_for_auth(tmp_path):
    from lvsmail.config import parse_cluster

    spec = parse_cluster("cluster: t\nservices:\n  - name: sub\n    fwmark: 2\n    realservers: [198.51.100.20]\n"
                         "    check: {type: submission, port: 587, credentials: /etc/lvsmail/submission.cred}\n")
    assert spec.services[0].check.credentials == "/etc/lvsmail/submission.cred"
