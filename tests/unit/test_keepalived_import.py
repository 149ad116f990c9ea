"""keepalived.conf import: the seed converts to the seed cluster file; nothing is dropped without a warning."""

import textwrap
from pathlib import Path

import pytest

from lvsmail.commands.config import config
from lvsmail.config import ConfigError, load_cluster, parse_cluster
from lvsmail.interop.keepalived import import_keepalived, split_words

EXAMPLES = Path(__file__).resolve().parents[2] / "directors" / "examples"
SEED_CONF = EXAMPLES / "keepalived-seed.conf"
SEED_YAML = EXAMPLES / "clustermail.yaml"


def imported(conf: str):
    return import_keepalived(textwrap.dedent(conf))


def only_service(conf: str):
    (service,) = imported(conf).spec.services
    return service


def errors(conf: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        imported(conf)
    return str(caught.value).splitlines()


def warnings(conf: str) -> list[str]:
    return imported(conf).warnings


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith(text):
            return number
    raise AssertionError(text)


def summary(spec) -> dict:
    """Services by kernel identity with what the acceptance criterion names."""
    return {(s.family, s.protocol, s.vip, s.port, s.fwmark): (
        s.name, s.scheduler, s.persistent, s.netmask, s.forwarding, s.quiescent, s.fallback,
        sorted((r.address, r.port, r.weight, r.forwarding) for r in s.realservers), s.check)
        for s in spec.services}


# -- acceptance: the seed --------------------------------------------------------------

def test_seed_keepalived_imports_to_the_same_services_as_the_seed_cluster_file():
    spec = import_keepalived(SEED_CONF).spec
    want = load_cluster(SEED_YAML)
    assert len(spec.services) == 2
    assert summary(spec) == summary(want)
    assert set(spec.vips) <= set(want.vips)


def test_seed_import_reports_vrrp_and_router_id_by_line():
    assert import_keepalived(SEED_CONF).warnings == [
        f"{SEED_CONF}:{line_of(SEED_CONF, 'router_id')}: directive 'router_id' cannot be expressed: "
        "lvsmail names a director by its host name in logs",
        f"{SEED_CONF}:{line_of(SEED_CONF, 'vrrp_instance')}: directive 'vrrp_instance' cannot be expressed: "
        "lvsmail's failover: section (VRRPv3, RFC 5798) replaces keepalived's VRRP; write it by hand "
        "(lvsmail does not import VRRP settings)",
    ]


def test_cli_prints_yaml_the_loader_accepts(cli_runner, tmp_path):
    result = cli_runner.invoke(config, ["import-keepalived", str(SEED_CONF)])
    assert result.exit_code == 0, result.output
    assert summary(parse_cluster(result.stdout)) == summary(load_cluster(SEED_YAML))
    assert len(result.stderr.splitlines()) == 2
    out = tmp_path / "c.yaml"
    result = cli_runner.invoke(config, ["import-keepalived", str(SEED_CONF), "-o", str(out), "--name", "mail"])
    assert result.exit_code == 0 and load_cluster(out).name == "mail"


def test_cli_exits_2_with_file_and_line(cli_runner, tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("virtual_server 192.0.2.33 25 {\n  real_server mail1.example.org 25 {\n  }\n  lb_algo\n}\n")
    result = cli_runner.invoke(config, ["import-keepalived", str(path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: real_server: 'mail1.example.org' is not an IP address (lvsmail never resolves host names)",
        f"{path}:4: lb_algo: expects one value, got 0",
    ]


# -- mapping ---------------------------------------------------------------------------

def test_defaults_are_keepalived_defaults():
    result = imported("""\
        virtual_server 192.0.2.33 25 {
            real_server 198.51.100.20 25 {
                TCP_CHECK {
                }
            }
        }
        """)
    (s,) = result.spec.services
    assert (s.name, s.protocol, s.scheduler, s.forwarding, s.persistent) == ("udp-25", "udp", "wlc", "nat", 0)
    assert result.warnings == ["<string>:1: virtual_server without protocol: keepalived creates a UDP service; "
                               "imported as udp (add 'protocol TCP' for a TCP service)"]
    assert (s.check.type, s.check.interval, s.check.timeout, s.check.fall) == ("connect", 60, 5, 2)


def test_settings_inherit_from_virtual_to_real_to_checker():
    s = only_service("""\
        virtual_server 192.0.2.33 25 {
            delay_loop 3
            connect_timeout 4
            retry 2
            lvs_sched rr
            lvs_method DR
            persistence_timeout
            real_server 198.51.100.20 25 {
                weight 3
                connect_timeout 7
                SMTP_CHECK {
                    helo_name director.example.org
                    connect_port 2525
                }
            }
            protocol TCP
        }
        """)
    assert (s.scheduler, s.forwarding, s.persistent) == ("rr", "dr", 360)
    assert s.realservers[0].weight == 3
    c = s.check
    assert (c.type, c.interval, c.timeout, c.fall, c.helo, c.port) == ("smtp", 3, 7, 3, "director.example.org", 2525)


def test_fwmark_group_sorry_server_and_inhibit():
    spec = imported("""\
        virtual_server_group MAIL {
            192.0.2.33-34 25
            fwmark 7
        }
        virtual_server group MAIL {
            lb_kind TUN
            inhibit_on_failure
            sorry_server 203.0.113.9 25
            real_server 198.51.100.20 25 {
                MISC_CHECK {
                    misc_path "/usr/local/bin/check-mail --quick"
                    misc_timeout 4
                }
            }
            protocol TCP
        }
        """).spec
    assert [(s.name, s.vip, s.port, s.fwmark) for s in spec.services] == [
        ("smtp", "192.0.2.33", 25, None), ("smtp-2", "192.0.2.34", 25, None), ("fwmark-7", None, None, 7)]
    s = spec.services[0]
    assert s.quiescent and s.forwarding == "tun"
    assert (s.fallback.address, s.fallback.port) == ("203.0.113.9", 25)
    assert (s.check.type, s.check.command, s.check.timeout, s.check.fall) == (
        "external", "/usr/local/bin/check-mail --quick", 4, 1)
    assert spec.vips == ("192.0.2.33", "192.0.2.34")


def test_ssl_get_with_status_and_regex():
    s = only_service("""\
        virtual_server 192.0.2.33 443 {
            lb_kind DR
            real_server 198.51.100.20 443 {
                SSL_GET {
                    url {
                        path /health
                        status_code 204
                        regex "^ok$"
                        virtualhost mail.example.org
                    }
                }
            }
            protocol TCP
        }
        """)
    c = s.check
    assert (c.type, c.path, c.status, c.receive, c.receive_regex, c.host, c.verify) == (
        "https", "/health", 204, "^ok$", True, "mail.example.org", False)


def test_include_is_read_relative_to_the_including_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "smtp.conf").write_text(
        "virtual_server 192.0.2.33 25 {\n  lb_kind DR\n  real_server 198.51.100.20 25\n"
        "  nat_mask 255.0.0.0\n  protocol TCP\n}\n")
    main = tmp_path / "keepalived.conf"
    main.write_text("! main\ninclude conf.d/*.conf\n")
    result = import_keepalived(main)
    assert [s.name for s in result.spec.services] == ["smtp"]
    assert result.warnings == [f"{tmp_path / 'conf.d' / 'smtp.conf'}:4: directive 'nat_mask' cannot be "
                               "expressed: keepalived ignores it too"]


def test_include_loop_is_an_error(tmp_path):
    main = tmp_path / "k.conf"
    main.write_text("include k.conf\n")
    with pytest.raises(ConfigError, match="includes itself"):
        import_keepalived(main)


def test_words_quotes_comments_and_braces():
    assert split_words('misc_path "/bin/check a" ! comment') == [("misc_path", False), ("/bin/check a", True)]
    assert split_words("url{path /x}#c") == [("url", False), ("{", False), ("path", False), ("/x", False),
                                              ("}", False)]
    assert split_words("regex '{'") == [("regex", False), ("{", True)]


# -- each unexpressible directive is reported with its line ------------------------------

@pytest.mark.parametrize("directive, reason", [
    ("ops", "one-packet scheduling"),
    ("persistence_engine sip", "persistence engines"),
    ("quorum 2", "quorum 1"),
    ("hysteresis 1", "no quorum"),
    ("quorum_up /bin/true", "runs no scripts"),
    ("sh-port", "scheduler flags"),
    ("smtp_alert yes", "alerts"),
    ("omega", "when it stops"),
    ("ha_suspend", "whether or not"),
])
def test_virtual_server_directives_without_equivalent(directive, reason):
    found = warnings(f"""\
        virtual_server 192.0.2.33 25 {{
            {directive}
            real_server 198.51.100.20 25
            protocol TCP
        }}
        """)
    key = directive.split()[0]
    assert len(found) == 1 and found[0].startswith(f"<string>:2: directive '{key}' cannot be expressed: ")
    assert reason in found[0]


@pytest.mark.parametrize("directive, reason", [
    ("digest 9b3a0c85a887a256d6939da88aabd8cd", "MD5 digest"),
    ("regex_no_match", "cannot be inverted"),
])
def test_url_directives_without_equivalent(directive, reason):
    found = warnings(f"""\
        virtual_server 192.0.2.33 80 {{
            real_server 198.51.100.20 80 {{
                HTTP_GET {{
                    url {{
                        path /
                        status_code 200
                        {directive}
                    }}
                }}
            }}
            protocol TCP
        }}
        """)
    assert len(found) == 1 and found[0].startswith(f"<string>:7: directive '{directive.split()[0]}' cannot")
    assert reason in found[0]


@pytest.mark.parametrize("directive, reason", [
    ("notify_down /bin/true", "runs no scripts"),
    ("uthreshold 100", "thresholds"),
])
def test_real_server_directives_without_equivalent(directive, reason):
    found = warnings(f"""\
        virtual_server 192.0.2.33 25 {{
            real_server 198.51.100.20 25 {{
                {directive}
            }}
            protocol TCP
        }}
        """)
    assert len(found) == 1 and found[0].startswith("<string>:3: ") and reason in found[0]


@pytest.mark.parametrize("directive, reason", [
    ("connect_ip 198.51.100.99", "own address"),
    ("bindto 198.51.100.1", "source address"),
    ("warmup 5", "as soon as it starts"),
    ("delay_before_retry 3", "at the check interval"),
])
def test_checker_directives_without_equivalent(directive, reason):
    found = warnings(f"""\
        virtual_server 192.0.2.33 25 {{
            real_server 198.51.100.20 25 {{
                TCP_CHECK {{
                    {directive}
                }}
            }}
            protocol TCP
        }}
        """)
    assert len(found) == 1 and found[0].startswith("<string>:4: ") and reason in found[0]


def test_differing_checkers_and_extra_checkers_are_named():
    found = warnings("""\
        virtual_server 192.0.2.33 25 {
            real_server 198.51.100.20 25 {
                TCP_CHECK {
                    retry 0
                }
                SMTP_CHECK {
                    retry 0
                }
            }
            real_server 198.51.100.21 25 {
                TCP_CHECK {
                    connect_timeout 9
                    retry 0
                }
            }
            real_server 198.51.100.22 25
            protocol TCP
        }
        """)
    assert found == [
        "<string>:6: directive 'SMTP_CHECK' cannot be expressed: lvsmail runs one check per service; the first "
        "checker of the first real server is used",
        "<string>:11: directive 'TCP_CHECK' imported with a change: lvsmail runs one check per service: real "
        "server 198.51.100.21 gets the check of <string>:3",
        "<string>:16: directive 'real_server' imported with a change: keepalived keeps a real server without a "
        "checker up; in lvsmail the service's check applies to it too",
    ]


def test_gue_tunnel_is_imported_as_ipip_with_a_warning():
    found = warnings("""\
        virtual_server 192.0.2.33 25 {
            lvs_method TUN type gue port 6080
            real_server 198.51.100.20 25
            protocol TCP
        }
        """)
    assert found == ["<string>:2: directive 'lvs_method' imported with a change: 'type gue port 6080': "
                     "lvsmail tunnels are IP-in-IP only"]


# -- syntax errors carry their line -------------------------------------------------------

def test_syntax_errors_with_line_numbers():
    assert errors("""\
        virtual_server 192.0.2.33 25 {
            real_server 198.51.100.20 25 {
                weight many
            }
            bogus_key 1
            protocol SCTP
        }
        }
        vrrp_nonsense {
        }
        """) == [
        "<string>:3: weight: 'many' must be a number 0..65535",
        "<string>:5: bogus_key: is not a virtual_server keyword",
        "<string>:6: protocol: 'SCTP': lvsmail services are TCP or UDP",
        "<string>:8: }: '}' without a matching '{'",
        "<string>:9: vrrp_nonsense: is not a keepalived configuration block (expected global_defs, "
        "virtual_server, ...)",
    ]


def test_unclosed_block_and_unterminated_quote():
    assert errors("""\
        virtual_server 192.0.2.33 25 {
            real_server 198.51.100.20 25 {
                MISC_CHECK {
                    misc_path "/bin/check
        """) == [
        "<string>:1: virtual_server: '{' is never closed",
        "<string>:2: real_server: '{' is never closed",
        "<string>:3: MISC_CHECK: '{' is never closed",
        "<string>:3: MISC_CHECK: needs misc_path (the program to run)",
        "<string>:4: unterminated \" quote",
    ]


def test_port_less_virtual_server_and_unknown_group():
    assert errors("""\
        virtual_server 192.0.2.33 {
            persistence_timeout 60
        }
        virtual_server group NOPE {
        }
        """) == [
        "<string>:1: virtual_server: 192.0.2.33: a service without a port (keepalived's persistent port-0 "
        "service) cannot be expressed; use a fwmark service",
        "<string>:4: virtual_server: no virtual_server_group named 'NOPE'",
    ]


def test_validation_problems_point_at_the_included_file(tmp_path):
    (tmp_path / "vs.conf").write_text(
        "virtual_server 192.0.2.33 25 {\n  lb_algo nosuch\n  real_server 198.51.100.20 25\n}\n")
    main = tmp_path / "keepalived.conf"
    main.write_text("! first\n! second\ninclude vs.conf\n")
    with pytest.raises(ConfigError) as caught:
        import_keepalived(main)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.path) == (str(tmp_path / "vs.conf"), 2, "services[0].scheduler")


def test_parameter_substitution_is_refused():
    assert errors("$PORT=25\nvirtual_server 192.0.2.33 $PORT {\n}\n")[0].startswith(
        "<string>:1: $PORT=25: parameter substitution")


def test_fwmark_real_server_ports_are_dropped_as_keepalived_does():
    result = imported("""\
        virtual_server fwmark 3 {
            lb_kind DR
            real_server 198.51.100.20 25
            real_server 198.51.100.21
        }
        """)
    (s,) = result.spec.services
    assert [(r.address, r.port) for r in s.realservers] == [("198.51.100.20", 0), ("198.51.100.21", 0)]
    assert result.warnings == ["<string>:3: directive 'real_server' imported with a change: port 25 dropped: "
                               "keepalived ignores real server ports of firewall-mark services (packets keep their "
                               "destination port)"]


def test_keepalived_itself_accepts_the_seed_sample():
    import shutil
    import subprocess

    keepalived = shutil.which("keepalived") or ("/usr/sbin/keepalived" if Path("/usr/sbin/keepalived").exists()
                                                else None)
    if keepalived is None:
        pytest.skip("keepalived is not installed")
    run = subprocess.run([keepalived, "--config-test", "-f", str(SEED_CONF)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
