"""Generated man pages and key reference: every command and every cluster-file key documented, valid roff.

The key checks ask the loader itself which keys it accepts (the "expected one
of ..." list of an unknown-key error), so a key added to a validator without
its documentation in the key table fails here, whichever way it was added.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from lvsmail import __version__, manpage
from lvsmail.cli import cli
from lvsmail.config import ConfigError, parse_cluster
from lvsmail.config.keys import BY_PATH, SECTIONS, Key, Section

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DOC = ROOT / "docs" / "cluster-file.md"
UNKNOWN = "zz_undocumented"

#: A file with every mapping of the cluster file present (each with a key or two), which loads cleanly.
FULL = {
    "cluster": "probe",
    "vips": ["192.0.2.33"],
    "timeouts": {"tcp": 900},
    "maintenance_dir": "/var/lib/lvsmail/maintenance",
    "alerts": {"webhook": "http://192.0.2.10/alerts"},
    "services": [{
        "name": "smtp", "vip": "192.0.2.33", "port": 25,
        "realservers": [{"address": "198.51.100.20"}],
        "fallback": {"address": "198.51.100.99"},
        "check": {"type": "smtp"},
    }],
    "sync": {"interface": "eth1"},
    "kernel": {"expire_nodest_conn": 1},
    "registration": {"token_file": "/etc/lvsmail/registration.key"},
    "mail": {"hostname": "mail.example.org", "domain": "example.org", "mailbox": {"layout": "home"},
             "storage": {"path": "/srv/mail"}, "tls": {"cert": "/etc/ssl/m.pem", "key": "/etc/ssl/m.key"},
             "health_page": {"path": "/var/www/html/health.html"}},
    "realserver": {"interface": "eth0"},
    "failover": {"interface": "eth0", "instances": [{
        "name": "mail", "vrid": 51, "vips": ["192.0.2.33/24"], "garp": {"count": 3},
        "track_interfaces": [{"name": "eth1"}], "track_services": [{"name": "smtp"}],
        "notify": {"master": "/usr/local/sbin/notify"},
    }]},
    "availability": {"node_availability": 0.999, "mtbf_hours": 8640,
                     "layers": {"directors": {"nodes": 2, "mode": "active-passive"}}},
    "metrics": {"listen": "127.0.0.1:9712"},
}
#: Mappings the table documents under another entry's path (same keys, another place in the file).
ALIASES = {
    "services[].fallback": "services[].realservers[]",
    "failover.instances[].track_services[]": "failover.instances[].track_interfaces[]",
}


def _mapping_at(doc: dict, path: str) -> dict:
    """The mapping a key path names in ``doc``: ``a[].b`` is the first entry of list a, then b."""
    node = doc
    for part in path.split(".") if path else ():
        name = part.removesuffix("[]")
        node = node[name] if name != "NAME" else next(iter(node.values()))
        if part.endswith("[]"):
            node = node[0]
    return node


def accepted_keys(path: str, check_type: str | None = None) -> tuple[str, ...]:
    """The keys the loader accepts at ``path``, as its unknown-key error lists them."""
    doc = copy.deepcopy(FULL)
    target = _mapping_at(doc, path)
    if check_type is not None:
        target["type"] = check_type
    target[UNKNOWN] = 1
    with pytest.raises(ConfigError) as caught:
        parse_cluster(yaml.safe_dump(doc, sort_keys=False), "probe.yaml")
    messages = [p.message for p in caught.value.problems if p.path.split(".")[-1] == UNKNOWN]
    assert len(messages) == 1, caught.value
    match = re.match(r"unknown key; expected one of (.*?)(?: \(did you mean .*\))?\Z", messages[0])
    assert match, messages[0]
    return tuple(match[1].split(", "))


def undocumented(sections: tuple[Section, ...]) -> list[str]:
    """Keys of ``sections`` without a type, a default or a meaning."""
    return [f"{s.path}.{k.name}" for s in sections for k in s.keys
            if not (k.type.strip() and k.default.strip() and k.doc.strip())]


# -- the key table against the loader ---------------------------------------------------

def test_the_probe_file_loads_cleanly():
    spec = parse_cluster(yaml.safe_dump(FULL, sort_keys=False), "probe.yaml")
    assert spec.failover is not None and spec.mail is not None and spec.availability is not None


@pytest.mark.parametrize("path", [s.path for s in SECTIONS if s.path != "services[].check"] + list(ALIASES))
def test_every_key_the_loader_accepts_is_in_the_table_and_back(path):
    documented = BY_PATH[ALIASES.get(path, path)].names
    assert accepted_keys(path) == documented


@pytest.mark.parametrize("check_type", sorted({t for k in BY_PATH["services[].check"].keys for t in k.types}))
def test_every_check_key_is_documented_for_the_types_that_take_it(check_type):
    documented = tuple(k.name for k in BY_PATH["services[].check"].keys if check_type in k.types)
    assert accepted_keys("services[].check", check_type) == documented


def test_every_documented_key_has_a_type_a_default_and_a_meaning():
    assert undocumented(SECTIONS) == []


def test_an_undocumented_key_is_caught():
    """The check above is not vacuous: a key without a meaning is reported by name."""
    bad = Section("mail.tls", "mail.tls", "TLS files.", (Key("cert", "absolute path", "required", ""),))
    assert undocumented((bad,)) == ["mail.tls.cert"]


def test_every_section_of_the_table_is_reachable_from_the_top_level():
    """A section documented under a path no mapping leads to would be documentation of nothing."""
    tops = set(BY_PATH[""].names)
    for section in SECTIONS:
        if section.path:
            assert section.path.split(".")[0].removesuffix("[]") in tops, section.path


#: Documented defaults compared with what the loader fills in when the key is left out.
DEFAULTS = {
    ("services[]", "scheduler"): lambda s: s.services[0].scheduler,
    ("services[]", "persistent"): lambda s: s.services[0].persistent,
    ("services[]", "forwarding"): lambda s: s.services[0].forwarding,
    ("services[]", "quiescent"): lambda s: s.services[0].quiescent,
    ("services[]", "protocol"): lambda s: s.services[0].protocol,
    ("services[].realservers[]", "weight"): lambda s: s.services[0].realservers[0].weight,
    ("services[].check", "interval"): lambda s: s.services[0].check.interval,
    ("services[].check", "timeout"): lambda s: s.services[0].check.timeout,
    ("services[].check", "rise"): lambda s: s.services[0].check.rise,
    ("services[].check", "fall"): lambda s: s.services[0].check.fall,
    ("services[].check", "start"): lambda s: s.services[0].check.start,
    ("services[].check", "via"): lambda s: s.services[0].check.via,
    ("services[].check", "verify"): lambda s: s.services[0].check.verify,
    ("alerts", "email_from"): lambda s: s.alerts.email_from,
    ("sync", "syncid"): lambda s: s.sync.syncid,
    ("sync", "role"): lambda s: s.sync.role,
    ("kernel", "expire_nodest_conn"): lambda s: s.kernel.expire_nodest_conn,
    ("kernel", "expire_quiescent_template"): lambda s: s.kernel.expire_quiescent_template,
    ("kernel", "backup_only"): lambda s: s.kernel.backup_only,
    ("kernel", "ip_forward"): lambda s: s.kernel.ip_forward,
    ("registration", "max_skew"): lambda s: s.registration.max_skew,
    ("registration", "max_body"): lambda s: s.registration.max_body,
    ("registration", "drain_timeout"): lambda s: s.registration.drain_timeout,
    ("mail", "imap"): lambda s: s.mail.imap,
    ("mail", "max_daemons"): lambda s: s.mail.max_daemons,
    ("mail.mailbox", "layout"): lambda s: s.mail.mailbox.layout,
    ("mail.storage", "type"): lambda s: s.mail.storage.type,
    ("mail.health_page", "text"): lambda s: s.mail.health_page.text,
    ("realserver", "state_file"): lambda s: s.realserver.state_file,
    ("failover.instances[]", "priority"): lambda s: s.failover.instances[0].priority,
    ("failover.instances[]", "advert_interval"): lambda s: s.failover.instances[0].advert_interval,
    ("failover.instances[]", "preempt"): lambda s: s.failover.instances[0].preempt,
    ("failover.instances[]", "preempt_delay"): lambda s: s.failover.instances[0].preempt_delay,
    ("failover.instances[]", "sync"): lambda s: s.failover.instances[0].sync,
    ("failover.instances[].garp", "interval"): lambda s: s.failover.instances[0].garp.interval,
    ("metrics", "listen"): lambda s: s.metrics.listen,
}


def _as_documented(value) -> str:
    """A loaded value as the table writes it: 2.0 -> 2, True -> true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("path,key", sorted(DEFAULTS))
def test_documented_default_is_what_the_loader_fills_in(path, key):
    doc = copy.deepcopy(FULL)
    _mapping_at(doc, path).pop(key, None)
    spec = parse_cluster(yaml.safe_dump(doc, sort_keys=False), "probe.yaml")
    documented = next(k for k in BY_PATH[path].keys if k.name == key).default.split(" (")[0]
    assert _as_documented(DEFAULTS[path, key](spec)) == documented


# -- lvsmail(8) ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, str]:
    outdir = tmp_path_factory.mktemp("man")
    assert manpage.main([str(outdir)]) == 0
    return {p.name: p.read_text(encoding="utf-8") for p in outdir.iterdir()}


def _visible_commands():
    root = click.Context(cli, info_name="lvsmail")
    return list(manpage.commands(cli, root))


def test_both_pages_are_written_with_the_version(pages):
    assert sorted(pages) == ["lvsmail-cluster.5", "lvsmail.8"]
    assert re.search(rf'^\.TH LVSMAIL 8 "\d{{4}}-\d\d-\d\d" "lvsmail {re.escape(__version__)}"', pages["lvsmail.8"],
                     re.M)
    assert re.search(r'^\.TH LVSMAIL-CLUSTER 5 ', pages["lvsmail-cluster.5"], re.M)


def test_every_command_and_option_is_in_lvsmail_8(pages):
    text = pages["lvsmail.8"]
    found = _visible_commands()
    paths = {ctx.command_path for ctx, _command in found}
    assert {"lvsmail director start", "lvsmail config validate", "lvsmail realserver join"} <= paths
    for ctx, command in found:
        assert f'.SS "{manpage.roff_text(ctx.command_path)}' in text, ctx.command_path
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                for flag in param.opts:
                    assert f"\\fB{manpage.roff_text(flag)}\\fR" in text, (ctx.command_path, flag)


def test_every_command_has_a_row_in_docs_commands():
    table = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    for ctx, command in _visible_commands():
        if not isinstance(command, click.Group):
            assert f"| `{ctx.command_path}" in table, ctx.command_path


def test_the_lab_is_left_out_of_lvsmail_8(pages):
    assert "lab" in cli.commands  # present in a checkout ...
    assert '.SS "lvsmail lab' not in pages["lvsmail.8"]  # ... and still not on a production host's page


def test_lvsmail_8_has_exit_status_files_and_see_also(pages):
    text = pages["lvsmail.8"]
    for needle in (".SH EXIT STATUS", "/etc/lvsmail/cluster.yaml", "/run/lvsmail", "/var/lib/lvsmail",
                   ".BR lvsmail\\-cluster (5)", ".BR ipvsadm (8)", ".BR keepalived (8)", ".BR ldirectord (8)"):
        assert needle in text
    exit_codes = re.findall(r"^\.TP\n\\fB(\d)\\fR$", text.split(".SH EXIT STATUS")[1].split(".SH")[0], re.M)
    assert exit_codes == ["0", "1", "2"]


def test_every_key_is_in_lvsmail_cluster_5(pages):
    text = pages["lvsmail-cluster.5"]
    for section in SECTIONS:
        block = text.split(f'.SS "{manpage.roff_text(section.title)}"')[1].split(".SS")[0]
        for key in section.keys:
            assert f".TP\n\\fB{manpage.roff_text(key.name)}\\fR\n{manpage.roff_text(key.doc)}" in block


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("name", ["lvsmail.8", "lvsmail-cluster.5"])
def test_groff_finds_nothing_to_warn_about(pages, name, tmp_path):
    page = tmp_path / name
    page.write_text(pages[name], encoding="utf-8")
    result = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (0, "")


def test_output_is_reproducible_and_dated_by_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14
    first, second = tmp_path / "a", tmp_path / "b"
    manpage.write_pages(first)
    manpage.write_pages(second)
    for name in ("lvsmail.8", "lvsmail-cluster.5"):
        text = (first / name).read_text()
        assert text == (second / name).read_text()
        assert '"2023-11-14"' in text.splitlines()[1]


def test_without_source_date_epoch_the_date_is_the_newest_changelog_entry(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    changelog = tmp_path / "changelog"
    changelog.write_text("lvsmail (0.2.0-1) bookworm; urgency=medium\n\n  * New.\n\n"
                         " -- A Maintainer <a@example.org>  Tue, 02 Jan 2024 10:00:00 +0000\n\n"
                         "lvsmail (0.1.0-1) bookworm; urgency=medium\n\n  * Old.\n\n"
                         " -- A Maintainer <a@example.org>  Mon, 01 May 2023 10:00:00 +0000\n")
    monkeypatch.setattr(manpage, "_CHANGELOG", changelog)
    assert manpage.page_date() == "2024-01-02"
    monkeypatch.setattr(manpage, "_CHANGELOG", tmp_path / "absent")
    assert manpage.page_date() == manpage.FALLBACK_DATE


def test_a_malformed_source_date_epoch_is_refused(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(SystemExit, match="SOURCE_DATE_EPOCH='yesterday' is not a Unix time"):
        manpage.page_date()


def test_roff_escaping_keeps_text_literal():
    assert manpage.roff_text(".starts with a dot\n'and a quote") == "\\&.starts with a dot\n\\&'and a quote"
    assert manpage.roff_text("a\\b --dry-run") == "a\\eb \\-\\-dry\\-run"
    assert manpage.roff_text("× ``enable``") == "\\[u00D7] \\fBenable\\fR"


# -- docs/cluster-file.md ---------------------------------------------------------------

def test_committed_key_reference_equals_the_generated_one():
    text = CLUSTER_DOC.read_text(encoding="utf-8")
    assert manpage.refresh_markdown(text, str(CLUSTER_DOC), SECTIONS) == text, \
        "run: python3 -m lvsmail.manpage --markdown docs/cluster-file.md"
    assert manpage.main(["--check", str(CLUSTER_DOC)]) == 0


def test_a_stale_key_reference_is_refused(tmp_path, capsys):
    stale = tmp_path / "cluster-file.md"
    text = CLUSTER_DOC.read_text(encoding="utf-8").replace("| `vips` |", "| `vipps` |")
    stale.write_text(text, encoding="utf-8")
    assert manpage.main(["--check", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    assert manpage.main(["--markdown", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == CLUSTER_DOC.read_text(encoding="utf-8")


def test_a_document_without_markers_is_a_usage_error(tmp_path):
    plain = tmp_path / "plain.md"
    plain.write_text("# nothing generated here\n", encoding="utf-8")
    assert manpage.main(["--markdown", str(plain)]) == 2
    assert plain.read_text(encoding="utf-8") == "# nothing generated here\n"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_links_between_the_readme_and_docs_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in _anchors(linked.read_text(encoding="utf-8")), f"{page.name}: {target}"
