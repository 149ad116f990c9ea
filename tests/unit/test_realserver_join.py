"""realserver join/leave against fakes: plans, idempotence, rollback at every step, leave restores, config errors."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from lvsmail.config import ConfigError, parse_cluster
from lvsmail.net.backend import FakeLink, FakeModules, FakeNetBackend
from lvsmail.net.realserver import NetContext
from lvsmail.net.sysctl import FakeSysctl, conf_key
from lvsmail.realserver import join as J
from lvsmail.realserver.changes import (
    Change,
    ChangeError,
    FakePostconf,
    JoinContext,
    JoinError,
    PostconfSet,
    Register,
    change_from_dict,
)
from lvsmail.realserver.mailstack import MailPaths, edit_shell_vars
from lvsmail.realserver.storage import MARKER, mount_of, parse_mountinfo

ADDR = "198.51.100.20"


def cluster(tmp_path, forwarding="dr", mail=True, extra="", storage_type="local"):
    """A cluster file with one SMTP and one HTTP service on the VIP, this server listed."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    mail_text = f"""
mail:
  hostname: clustermail.example.org
  domain: example.org
  destinations: [$myhostname, example.org, localhost]
  mynetworks: [203.0.113.172/32]
  storage: {{path: {store}, type: {storage_type}}}
  imap: dovecot
  max_daemons: 20
  health_page: {{path: /var/www/html/solicitud.html, text: test page}}
""" if mail else ""
    text = textwrap.dedent(f"""\
        cluster: clustermail
        vips: [192.0.2.33]
        services:
          - {{name: smtp, vip: 192.0.2.33, port: 25, forwarding: {forwarding}, realservers: [{ADDR}, 198.51.100.32]}}
          - {{name: web, vip: 192.0.2.33, port: 80, forwarding: {forwarding}, realservers: [{ADDR}]}}
        realserver: {{nat_gateway: 198.51.100.1}}
        """) + mail_text + extra
    return parse_cluster(text, "cluster.yaml")


class Env:
    """A fake real server: network, sysctls, Postfix main.cf, and a temp root for files."""

    def __init__(self, tmp_path, admin_sysctls=None):
        self.root = tmp_path / "root"
        for d in ("etc/sysctl.d", "etc/modules-load.d", "etc/systemd/system", "var/www/html", "etc/dovecot/conf.d",
                  "var/lib/lvsmail"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        values = {conf_key("inet", i, k): "0" for i in ("all", "default", "lo", "eth0")
                  for k in ("rp_filter", "arp_ignore", "arp_announce")}
        values.update(admin_sysctls or {})
        self.sysctl = FakeSysctl(values)
        self.net = FakeNetBackend(
            {"lo": FakeLink(True, ["127.0.0.1/8"]), "eth0": FakeLink(True, [f"{ADDR}/24"])},
            default_routes={"inet": "198.51.100.254"})
        self.modules = FakeModules(self.net, self.sysctl)
        self.pc_dir = str(self.root / "etc/postfix")
        self.postconf = FakePostconf({self.pc_dir: {"myhostname": "rs1.example.org",
                                                    "inet_interfaces": "loopback-only"}})
        self.reloads = []
        self.ctx = JoinContext(NetContext(self.net, self.sysctl, self.modules), self.postconf,
                               reload=lambda s: self.reloads.append(s) or f"{s} reloaded")
        self.opts = J.JoinOptions(address=ADDR, config_path="/etc/lvsmail/cluster.yaml", root=str(self.root),
                                  paths=MailPaths(postfix_dir=self.pc_dir,
                                                  dovecot_config=str(self.root / "etc/dovecot/dovecot.conf"),
                                                  courier_dir=str(self.root / "etc/courier")),
                                  command=("/usr/bin/lvsmail",))
        self.state_file = str(self.root / "var/lib/lvsmail/realserver.json")

    def snapshot(self):
        """Everything join may change."""
        files = {}
        for dirpath, _dirs, names in os.walk(self.root):
            for n in names:
                p = os.path.join(dirpath, n)
                files[p] = os.readlink(p) if os.path.islink(p) else open(p).read()
        for dirpath, dirs, _ in os.walk(self.root):
            for d in dirs:
                p = os.path.join(dirpath, d)
                if os.path.islink(p):
                    files[p] = os.readlink(p)
        return (dict(self.sysctl.values), {k: list(v.addresses) for k, v in self.net.links.items()},
                {k: v.up for k, v in self.net.links.items()}, dict(self.net.routes),
                json.dumps(self.postconf.files, sort_keys=True), files)

    def plan(self, spec, prober=None, mountinfo=None):
        return J.build_plan(spec, self.opts, self.ctx, prober, owner_ids=lambda u: (5000, 5000),
                            mountinfo=mountinfo or "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")


def no_arp(interface, sender, target):
    return []


# -- config -------------------------------------------------------------------------

def test_mail_section_errors_name_line_and_key_all_at_once(tmp_path):
    text = textwrap.dedent("""\
        cluster: c
        services: []
        mail:
          hostname: notqualified
          domain: example.org
          imap: cyrus
          storage: {path: relative/path, type: nfs}
          mailbox: {layout: virtual}
          max_daemons: 0
          colour: blue
        """)
    with pytest.raises(ConfigError) as err:
        parse_cluster(text, "c.yaml")
    msg = str(err.value)
    assert "c.yaml:4: mail.hostname: 'notqualified' is not a fully qualified domain name" in msg
    assert "c.yaml:6: mail.imap: 'cyrus' is not a supported IMAP server" in msg
    assert "c.yaml:7: mail.storage.path: 'relative/path' is not an absolute path" in msg
    assert "mail.mailbox: layout virtual needs 'root'" in msg
    assert "c.yaml:9: mail.max_daemons: must be between 1 and 100000" in msg
    assert "c.yaml:10: mail.colour: unknown key" in msg


def test_virtual_mailboxes_must_live_on_the_shared_storage():
    with pytest.raises(ConfigError, match="mail.mailbox.root: /var/mail is not on the shared storage /srv/mail"):
        parse_cluster(textwrap.dedent("""\
            cluster: c
            services: []
            mail:
              hostname: m.example.org
              domain: example.org
              storage: {path: /srv/mail, type: nfs4}
              mailbox: {layout: virtual, root: /var/mail, maps: 'texthash:/etc/postfix/vmailbox'}
            """))


def test_mail_section_round_trips_through_dump(tmp_path):
    from lvsmail.config import dump_cluster

    spec = cluster(tmp_path)
    again = parse_cluster(dump_cluster(spec))
    assert again.mail == spec.mail and again.realserver == spec.realserver


# -- plan -----------------------------------------------------------------------------

def test_dr_plan_covers_network_persistence_mail_health_page_and_marker(tmp_path):
    env = Env(tmp_path)
    plan = env.plan(cluster(tmp_path), no_arp)
    assert not plan.problems, plan.problems
    lines = [c.describe() for c in plan.changes]
    assert lines[:5] == ["sysctl -w net.ipv4.conf.all.arp_ignore=1", "sysctl -w net.ipv4.conf.all.arp_announce=2",
                         "sysctl -w net.ipv4.conf.eth0.arp_ignore=1", "sysctl -w net.ipv4.conf.eth0.arp_announce=2",
                         "ip addr add 192.0.2.33/32 dev lo"]
    assert any("sysctl drop-in" in line for line in lines)
    assert any(line.startswith("ln -s ../lvsmail-realserver.service") for line in lines)
    assert f"postconf -c {env.pc_dir} -e 'myhostname = clustermail.example.org'" in lines
    assert f"postconf -c {env.pc_dir} -e 'inet_interfaces = loopback-only, 192.0.2.33, {ADDR}'" in lines
    assert f"postconf -c {env.pc_dir} -e 'home_mailbox = Maildir/'" in lines
    assert any(line.startswith("write Dovecot settings") for line in lines)
    assert any(line.startswith("write health page") for line in lines)
    assert lines[-1].startswith("write storage marker") and lines[-1].endswith(MARKER)
    assert plan.interface == "eth0" and plan.role.static


def test_tun_plan_loads_ipip_and_persists_it(tmp_path):
    env = Env(tmp_path)
    plan = env.plan(cluster(tmp_path, "tun"))
    lines = [c.describe() for c in plan.changes]
    assert lines[0] == "modprobe ipip" and "ip addr add 192.0.2.33/32 dev tunl0" in lines
    assert any("modules-load list" in line for line in lines)


def test_nat_plan_routes_via_the_director_and_trusts_it_in_mynetworks(tmp_path):
    env = Env(tmp_path)
    plan = env.plan(cluster(tmp_path, "nat"))
    lines = [c.describe() for c in plan.changes]
    assert lines[0] == "ip route replace default via 198.51.100.1"
    assert not any("addr add" in line for line in lines)
    assert any("mynetworks = 127.0.0.0/8 [::1]/128 203.0.113.172/32 198.51.100.1/32" in line for line in lines)


def test_unit_file_in_the_repository_is_the_one_join_writes_for_the_package():
    from lvsmail.realserver.persist import unit_text

    repo = os.path.join(os.path.dirname(__file__), "..", "..", "realservers", "systemd", "lvsmail-realserver.service")
    assert open(repo).read() == unit_text(["/usr/bin/lvsmail"])


# -- preflight --------------------------------------------------------------------------

def test_preflight_refuses_a_vip_answered_on_the_lan_by_a_stranger(tmp_path):
    env = Env(tmp_path)
    spec = cluster(tmp_path, extra="")
    plan = env.plan(spec, lambda i, s, t: ["02:00:00:00:00:99", "02:00:00:00:00:01"] if t == "192.0.2.33" else [])
    assert any("VIP 192.0.2.33 is answered on eth0 by 02:00:00:00:00:01, 02:00:00:00:00:99" in p for p in plan.problems)


def test_preflight_accepts_the_directors_own_arp_answer(tmp_path):
    env = Env(tmp_path)
    text = "realserver: {nat_gateway: 198.51.100.1, directors: [198.51.100.1]}"
    spec = cluster(tmp_path)
    spec = parse_cluster(dump_without_realserver(spec) + text)
    macs = {"198.51.100.1": ["02:00:00:00:00:01"], "192.0.2.33": ["02:00:00:00:00:01"]}
    plan = env.plan(spec, lambda i, s, t: macs.get(t, []))
    assert not plan.problems, plan.problems
    assert any("(a director)" in n for n in plan.notes)


def dump_without_realserver(spec):
    from dataclasses import replace

    from lvsmail.config import dump_cluster

    return dump_cluster(replace(spec, realserver=None))


def test_preflight_refuses_missing_ipip_a_vip_on_eth0_and_an_unknown_address(tmp_path):
    env = Env(tmp_path)
    env.modules.available = set()
    env.net.links["eth0"].addresses.append("192.0.2.33/24")
    plan = env.plan(cluster(tmp_path, "tun"))
    assert any("ipip kernel module is not available" in p for p in plan.problems)
    assert any("VIP 192.0.2.33 is already on eth0 as 192.0.2.33/24" in p for p in plan.problems)
    env.opts = J.JoinOptions(address="198.51.100.99", root=env.opts.root, paths=env.opts.paths)
    with pytest.raises(JoinError, match="198.51.100.99 is not a real server of any service"):
        env.plan(cluster(tmp_path))


def test_preflight_refuses_storage_of_the_wrong_type_or_cluster(tmp_path):
    env = Env(tmp_path)
    spec = cluster(tmp_path, storage_type="nfs4")
    plan = env.plan(spec)
    assert any("not nfs4 as the cluster file says" in p for p in plan.problems)
    (tmp_path / "store" / MARKER).write_text(json.dumps({"cluster": "other"}))
    plan = env.plan(cluster(tmp_path))
    assert any("belongs to cluster 'other', not 'clustermail'" in p for p in plan.problems)


def test_mountinfo_finds_the_longest_mount_point():
    info = ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "40 22 0:50 / /srv/mail rw - nfs4 nas:/export/mail rw\n"
            "41 22 0:51 / /srv/mail\\040old rw - ext4 /dev/sdb rw\n")
    mounts = parse_mountinfo(info)
    assert mount_of("/srv/mail/boxes", mounts).fstype == "nfs4"
    assert mount_of("/srv/mail old/x", mounts).fstype == "ext4" and mount_of("/srv/mailx", mounts).point == "/"


# -- apply, idempotence, rollback, leave ---------------------------------------------------

def test_join_then_second_join_changes_nothing_then_leave_restores_everything(tmp_path):
    env = Env(tmp_path, admin_sysctls={"net.ipv4.conf.all.arp_announce": "1"})  # the admin had set one
    spec = cluster(tmp_path)
    before = env.snapshot()
    plan = env.plan(spec, no_arp)
    pending = J.pending_changes(plan, env.ctx)
    assert pending
    result = J.join(spec, env.opts, env.ctx, plan)
    assert env.sysctl.values["net.ipv4.conf.all.arp_announce"] == "2"
    assert "192.0.2.33/32" in env.net.links["lo"].addresses
    assert env.postconf.files[env.pc_dir]["myhostname"] == "clustermail.example.org"
    assert open(tmp_path / "root/var/www/html/solicitud.html").read().count("test page") == 2
    # systemd: the boot unit and its drop-in are read by the manager on daemon-reload.
    assert sorted(set(env.reloads)) == ["dovecot", "postfix", "systemd"]
    assert result.applied
    state = json.load(open(env.state_file))
    undo = state["undo"]
    assert {"op": "postconf", "config_dir": env.pc_dir, "name": "myhostname", "value": "rs1.example.org"} in undo
    assert {"op": "net", "step": {"op": "sysctl", "key": "net.ipv4.conf.all.arp_announce", "value": "1"}} in undo
    assert os.stat(env.state_file).st_mode & 0o077 == 0

    again = env.plan(spec, no_arp)
    assert J.pending_changes(again, env.ctx) == []
    env.reloads.clear()
    second = J.join(spec, env.opts, env.ctx, again)
    assert second.applied == [] and env.reloads == []

    J.leave(env.state_file, env.ctx)
    after = env.snapshot()
    # the storage marker stays (cluster data); everything else is as before
    assert after[:5] == before[:5]
    marker = str(tmp_path / "store" / MARKER)
    assert {k: v for k, v in after[5].items() if k != marker} == before[5]
    assert not os.path.exists(env.state_file)


def test_dry_run_plan_reads_only(tmp_path):
    env = Env(tmp_path)
    before = env.snapshot()
    plan = env.plan(cluster(tmp_path), no_arp)
    assert J.pending_changes(plan, env.ctx)
    assert env.snapshot() == before and env.sysctl.writes == [] and env.postconf.calls == []


class Boom(Change):
    """A change that fails, standing in for the one at its position."""

    op = "boom"

    def __init__(self, inner):
        self.inner = inner

    def describe(self):
        return f"boom instead of {self.inner.describe()}"

    def pending(self, ctx):
        return True

    def apply(self, ctx):
        raise OSError(5, "injected failure")


def test_a_failure_at_each_step_rolls_back_everything_before_it(tmp_path):
    spec = cluster(tmp_path)
    env0 = Env(tmp_path / "probe")
    n = len(env0.plan(cluster(tmp_path), no_arp).changes)
    assert n >= 15
    for index in range(n):
        env = Env(tmp_path / f"run{index}")
        before = env.snapshot()
        plan = env.plan(spec, no_arp)
        plan.changes[index] = Boom(plan.changes[index])
        with pytest.raises(ChangeError) as err:
            J.join(spec, env.opts, env.ctx, plan)
        assert err.value.rollback_errors == []
        after = env.snapshot()
        assert after[:5] == before[:5], f"failure at step {index} ({plan.changes[index].describe()})"
        marker = str(tmp_path / "store" / MARKER)
        assert {k: v for k, v in after[5].items() if k != marker} == before[5], index
        assert not os.path.exists(env.state_file)


def test_registration_is_last_and_leave_drains_before_removing_the_vip(tmp_path):
    class Registrar:
        def __init__(self, env):
            self.env, self.calls = env, []

        def register(self, address, services, weight):
            self.calls.append(("register", address, services))
            self.members = {address: (services, weight)}

        def registered(self, address, services, weight):
            return getattr(self, "members", {}).get(address) == (services, weight)

        def drain_and_deregister(self, address):
            # at drain time the VIP must still be there, so established sessions finish
            self.calls.append(("drain", address, "192.0.2.33/32" in self.env.net.links["lo"].addresses))
            return "drained in 0.0 s, deregistered"

    env = Env(tmp_path)
    reg = Registrar(env)
    env.ctx.registrar = reg
    extra = "registration: {token_file: /etc/lvsmail/token, directors: ['http://198.51.100.1:8730']}\n"
    text = dump_without_realserver(cluster(tmp_path, extra=extra)).replace(f"{ADDR}\n", "198.51.100.21\n", 1)
    text = text.replace(f"- {ADDR}", "- 198.51.100.21")
    spec = parse_cluster(text + "realserver: {services: [smtp]}\n")
    plan = env.plan(spec, no_arp)
    assert not plan.role.static and isinstance(plan.changes[-1], Register)
    assert J.pending_changes(plan, env.ctx)[-1] == Register(ADDR, ("smtp",))
    J.join(spec, env.opts, env.ctx, plan)
    assert reg.calls == [("register", ADDR, ("smtp",))]
    assert J.pending_changes(env.plan(spec, no_arp), env.ctx) == []  # the directors have it: nothing pending
    J.join(spec, env.opts, env.ctx, env.plan(spec, no_arp))  # re-register is idempotent
    result = J.leave(env.state_file, env.ctx)
    assert reg.calls[-1] == ("drain", ADDR, True) and [c[0] for c in reg.calls].count("drain") == 1
    assert "drained in 0.0 s, deregistered" in result.notes
    assert "192.0.2.33/32" not in env.net.links["lo"].addresses


def test_leave_stops_before_changing_anything_when_the_drain_fails(tmp_path):
    class Down:
        def register(self, *a):
            pass

        def drain_and_deregister(self, address):
            raise JoinError("http://198.51.100.1:8730: connection refused")

    env = Env(tmp_path)
    env.ctx.registrar = Down()
    extra = "registration: {token_file: /etc/lvsmail/token, directors: ['http://198.51.100.1:8730']}\n"
    text = dump_without_realserver(cluster(tmp_path, extra=extra)).replace(f"- {ADDR}", "- 198.51.100.21")
    spec = parse_cluster(text + "realserver: {services: [smtp]}\n")
    J.join(spec, env.opts, env.ctx, env.plan(spec, no_arp))
    with pytest.raises(JoinError, match="nothing else was changed"):
        J.leave(env.state_file, env.ctx)
    assert "192.0.2.33/32" in env.net.links["lo"].addresses and os.path.exists(env.state_file)


def test_postconf_undo_removes_a_parameter_that_was_not_set(tmp_path):
    env = Env(tmp_path)
    undo = PostconfSet(env.pc_dir, "mydomain", "example.org").apply(env.ctx)
    assert undo == PostconfSet(env.pc_dir, "mydomain", None)
    undo.apply(env.ctx)
    assert "mydomain" not in env.postconf.files[env.pc_dir]
    assert change_from_dict(json.loads(json.dumps(undo.to_dict()))) == undo


def test_courier_imapd_keeps_comments_and_replaces_assignments():
    text = "# comment\nADDRESS=127.0.0.1\nMAXDAEMONS=40\nOTHER=1\nADDRESS=::1\n"
    out = edit_shell_vars(text, {"ADDRESS": "0", "MAXDAEMONS": "20", "MAILDIRPATH": "Maildir"})
    assert out == "# comment\nADDRESS=0\nMAXDAEMONS=20\nOTHER=1\n#ADDRESS=::1\nMAILDIRPATH=Maildir\n"


def test_dovecot_dropin_for_network_storage_has_the_nfs_settings(tmp_path):
    from lvsmail.realserver.mailstack import dovecot_text

    spec = cluster(tmp_path, storage_type="nfs4")
    text, expect = dovecot_text(spec.mail, "clustermail", None)
    for line in ("mail_location = maildir:~/Maildir", "mmap_disable = yes", "mail_fsync = always",
                 "mail_nfs_storage = yes", "mail_nfs_index = yes", "lock_method = fcntl", "  process_limit = 20"):
        assert line in text.splitlines()
    assert ("mail_location", "maildir:~/Maildir") in expect
    local, _ = dovecot_text(cluster(tmp_path).mail, "clustermail", None)
    assert "mmap_disable" not in local


def test_dovecot_dropin_not_included_by_the_main_config_is_refused_and_removed(tmp_path):
    env = Env(tmp_path)
    env.ctx.dovecot_effective = lambda main, setting: ""  # Dovecot does not see our file
    spec = cluster(tmp_path)
    with pytest.raises(ChangeError, match="does not include"):
        J.join(spec, env.opts, env.ctx, env.plan(spec, no_arp))
    assert not os.path.exists(env.opts.paths.dovecot_dropin)
    assert "192.0.2.33/32" not in env.net.links["lo"].addresses


# -- the boot unit: the packaged unit (or the same text) plus join's drop-in --------------

def _dirs(root):
    """Every directory under ``root`` (the snapshot lists only files and links)."""
    return sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root))


def test_source_install_gets_the_unit_text_and_a_dropin_with_this_join_and_leave_removes_them(tmp_path):
    from lvsmail.realserver import persist

    env = Env(tmp_path)
    spec = cluster(tmp_path)
    dirs = _dirs(env.root)
    J.join(spec, env.opts, env.ctx, env.plan(spec, no_arp))
    units = env.root / "etc/systemd/system"
    assert (units / persist.UNIT_NAME).read_text() == persist.unit_text(("/usr/bin/lvsmail",))
    dropin = (units / f"{persist.UNIT_NAME}.d" / persist.DROPIN_NAME).read_text()
    assert ("ExecStart=\nExecStart=/usr/bin/lvsmail realserver join -c /etc/lvsmail/cluster.yaml --address "
            f"{ADDR} --state-file {env.state_file}\n") in dropin
    assert f"ConditionPathExists=\nConditionPathExists={env.state_file}\n" in dropin
    assert f"RequiresMountsFor={tmp_path / 'store'}\n" in dropin
    assert os.readlink(units / "multi-user.target.wants" / persist.UNIT_NAME) == f"../{persist.UNIT_NAME}"
    env.reloads.clear()
    J.leave(env.state_file, env.ctx)
    assert os.listdir(units) == [] and _dirs(env.root) == dirs
    assert "systemd" in env.reloads  # the manager forgets the drop-in at once, not at the next boot


def test_reloading_systemd_where_it_is_not_pid_1_says_so(tmp_path, monkeypatch):
    from lvsmail.realserver import local

    real = os.path.isdir
    monkeypatch.setattr(local.os.path, "isdir", lambda p: False if p == "/run/systemd/system" else real(p))
    said = local.Reloader(MailPaths())("systemd")
    assert said == "systemd is not running here: the boot unit applies at the next boot"


def test_with_the_packaged_unit_join_writes_only_its_dropin_and_enables_the_packaged_unit(tmp_path):
    from lvsmail.realserver import persist

    env = Env(tmp_path)
    vendor = env.root / "lib/systemd/system" / persist.UNIT_NAME
    vendor.parent.mkdir(parents=True)
    vendor.write_text(persist.unit_text(("/usr/bin/lvsmail",)))
    spec = cluster(tmp_path)
    J.join(spec, env.opts, env.ctx, env.plan(spec, no_arp))
    units = env.root / "etc/systemd/system"
    assert sorted(os.listdir(units)) == [f"{persist.UNIT_NAME}.d", "multi-user.target.wants"]
    assert os.readlink(units / "multi-user.target.wants" / persist.UNIT_NAME) == \
        f"/lib/systemd/system/{persist.UNIT_NAME}"
    assert J.pending_changes(env.plan(spec, no_arp), env.ctx) == []  # the boot's join changes nothing
    J.leave(env.state_file, env.ctx)
    assert os.listdir(units) == [] and vendor.read_text() == persist.unit_text(("/usr/bin/lvsmail",))


def test_a_failed_join_leaves_no_dropin_directory(tmp_path):
    from lvsmail.realserver import persist

    env = Env(tmp_path)
    spec = cluster(tmp_path)
    plan = env.plan(spec, no_arp)
    # A change after the drop-in fails: everything is rolled back, the directory it needed too.
    after = next(i for i, c in enumerate(plan.changes) if getattr(c, "what", "") == "systemd drop-in") + 1
    plan.changes.insert(after, J.WriteFile(str(tmp_path / "no/such/dir/file"), "x"))
    with pytest.raises(ChangeError):
        J.join(spec, env.opts, env.ctx, plan)
    assert not (env.root / "etc/systemd/system" / f"{persist.UNIT_NAME}.d").exists()


def test_exec_line_quotes_and_escapes_specifiers_and_variables():
    from lvsmail.realserver.persist import exec_line

    assert exec_line(["/opt/my lvsmail/bin/lvsmail", "-c", "/etc/100%/$HOME.yaml"]) == \
        "'/opt/my lvsmail/bin/lvsmail' -c '/etc/100%%/$$HOME.yaml'"


def test_the_boot_command_is_the_lvsmail_that_runs_join(tmp_path, monkeypatch):
    import sys

    from lvsmail.commands.realserver import lvsmail_command

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    script = venv / "lvsmail"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    # The console script, by the path the kernel ran (from PATH, or relative to the working directory).
    assert lvsmail_command(str(script), "/usr/bin/python3") == (str(script),)
    monkeypatch.chdir(venv)
    assert lvsmail_command("./lvsmail", "/usr/bin/python3") == (str(script),)
    # `python -m lvsmail` (argv[0] is the module's file) or a test runner: the same interpreter, by its
    # own path (a virtual environment's python is a link that selects the environment: not resolved).
    python = venv / "python3"
    python.symlink_to(sys.executable)
    assert lvsmail_command("/x/lvsmail/__main__.py", str(python)) == (str(python), "-m", "lvsmail")
    assert lvsmail_command(str(tmp_path / "pytest"), "python3") == (str(venv / "python3"), "-m", "lvsmail")
    script.chmod(0o644)
    assert lvsmail_command(str(script), str(python)) == (str(python), "-m", "lvsmail")


def test_join_command_writes_the_running_installation_into_the_dropin(tmp_path, monkeypatch):
    """Through the command line: the drop-in's ExecStart names this interpreter (CliRunner is not a console script)."""
    import sys
    from types import SimpleNamespace

    from click.testing import CliRunner

    from lvsmail.commands import realserver as cmd

    captured = {}

    def fake_build_plan(spec, opts, ctx, prober):
        captured["argv"] = J.unit_argv(opts, "/var/lib/lvsmail/realserver.json")
        raise JoinError("stop here: the plan is all this test needs")

    monkeypatch.setattr(J, "build_plan", fake_build_plan)
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 0)
    # The host's network is not read: the plan is replaced, and the context only has to close.
    closed = []
    host = SimpleNamespace(net=SimpleNamespace(net=SimpleNamespace(close=lambda: closed.append(True))))
    monkeypatch.setattr("lvsmail.realserver.local.local_join_context", lambda *a, **k: host)
    path = tmp_path / "cluster.yaml"
    path.write_text(f"cluster: c\nvips: [192.0.2.33]\nservices:\n  - {{name: smtp, vip: 192.0.2.33, port: 25, "
                    f"forwarding: dr, realservers: [{ADDR}]}}\n")
    result = CliRunner().invoke(cmd.realserver, ["join", "-c", str(path), "--address", ADDR, "--dry-run"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert captured["argv"][:3] == [os.path.abspath(sys.executable), "-m", "lvsmail"]
    assert captured["argv"][3:7] == ["realserver", "join", "-c", str(path)]
    assert closed == [True]


@pytest.mark.parametrize("text, words", [
    ("[]", "must hold a JSON object"),
    ("[" * 100000, "nested too deeply"),
    ('{"version": 1, "undo": [{"op": "net", "step": []}]}', "undo[0]: step [] does not fit 'net'"),
    ("not json", "is not JSON"),
])
def test_damaged_state_file_is_a_join_error_that_names_the_problem(tmp_path, text, words):
    # Found by fuzzing the state file's reader: leave read it with json.loads and crashed
    # (AttributeError, RecursionError) or said only JoinError('op').
    path = tmp_path / "realserver.json"
    path.write_text(text)
    with pytest.raises(J.JoinError) as info:
        J.read_state(str(path))
    assert words in str(info.value) and str(path) in str(info.value) and "nothing was changed" in str(info.value)


def test_missing_state_file_means_not_joined(tmp_path):
    assert J.read_state(str(tmp_path / "realserver.json")) is None
