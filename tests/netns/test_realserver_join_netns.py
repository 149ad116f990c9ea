"""``lvsmail realserver join/verify/leave`` on a real-server namespace, checked from outside (root, no IPVS).

Two namespaces joined by a veth pair: ``rj-…-gw`` (the LAN: router .254 and the
directors' inside address .1) and ``rj-…-rs`` (the real server, 198.51.100.20).
The DR test runs Debian's Postfix and Dovecot as private instances inside the
real server's namespace (their own main.cf/master.cf, queue, data, base_dir and
config file in a temporary directory; nothing under /etc is read for writing or
changed), lets join configure them, and then verify delivers a message to the VIP
and reads it back over IMAP.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from lvsmail.lab.mailstack import MASTER_CF  # one master.cf for these and the lab's real servers
from lvsmail.net import netns
from lvsmail.net.sysctl import ProcSysctl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces, Postfix and Dovecot")

RS, GW, DIRECTOR, VIP = "198.51.100.20", "198.51.100.254", "198.51.100.1", "192.0.2.33"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lan(name: str) -> tuple[str, str]:
    """gw and rs namespaces with a veth between them; rs has its address and a default route via gw."""
    gw, rs = f"{name}-gw", f"{name}-rs"
    netns.create_netns(gw)
    netns.create_netns(rs)

    def build_gw():
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="lan", kind="veth", peer={"ifname": "eth0", "net_ns_fd": rs})
            idx = ipr.link_lookup(ifname="lan")[0]
            ipr.addr("add", index=idx, address=GW, prefixlen=24)
            ipr.addr("add", index=idx, address=DIRECTOR, prefixlen=24)
            ipr.link("set", index=idx, state="up")

    def build_rs():
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=RS, prefixlen=24)
            ipr.link("set", index=idx, state="up")
            ipr.route("replace", dst="0.0.0.0/0", gateway=GW)

    netns.run_in_netns(gw, build_gw)
    netns.run_in_netns(rs, build_rs)
    return gw, rs


def _lvsmail(ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the lvsmail command in a namespace, from this checkout."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "lvsmail", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _addresses(link: str) -> list[str]:
    from lvsmail.net.realserver import local_context

    ctx = local_context()
    try:
        return ctx.net.addresses(link)
    finally:
        ctx.net.close()


def _wait_port(ns: str, host: str, port: int, log: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            s = netns.socket_in_netns(ns)
            s.settimeout(0.5)
            s.connect((host, port))
            s.close()
            return
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                text = open(log).read()[-2000:] if os.path.exists(log) else "(no log)"
                pytest.fail(f"{host}:{port} not listening in {ns} after {seconds:.0f} s; log:\n{text}")
            time.sleep(0.1)


@pytest.fixture
def lan():
    """A fresh gw/rs pair of namespaces, removed afterwards."""
    try:
        gw, rs = _lan(f"rj-{os.getpid()}")
    except OSError as exc:
        pytest.skip(f"cannot create network namespaces: {exc}")
    try:
        yield gw, rs
    finally:
        for name in (rs, gw):
            try:
                netns.remove_netns(name)
            except OSError:
                pass


@pytest.fixture
def instance_dir():
    """A short, traversable temporary directory (unix socket paths are limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="rj")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_nat_join_routes_via_the_director_and_leave_restores_the_route(lan, instance_dir):
    gw, rs = lan
    cfg = os.path.join(instance_dir, "cluster.yaml")
    with open(cfg, "w") as f:
        f.write(textwrap.dedent(f"""\
            cluster: rjnat
            vips: [{VIP}]
            services:
              - {{name: smtp, vip: {VIP}, port: 25, forwarding: nat, realservers: ["{RS}:2525"]}}
            realserver: {{nat_gateway: {DIRECTOR}}}
            """))
    root = os.path.join(instance_dir, "root")
    for d in ("etc/sysctl.d", "etc/systemd/system"):
        os.makedirs(os.path.join(root, d))
    state = os.path.join(instance_dir, "state.json")
    common = ["-c", cfg, "--address", RS, "--root", root, "--state-file", state]
    dry = _lvsmail(rs, "realserver", "join", *common, "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert f"would ip route replace default via {DIRECTOR}" in dry.stdout
    done = _lvsmail(rs, "realserver", "join", *common)
    assert done.returncode == 0, done.stderr + done.stdout
    from lvsmail.net.realserver import local_context

    def default_route():
        ctx = local_context()
        try:
            return ctx.net.default_route("inet")
        finally:
            ctx.net.close()

    assert netns.run_in_netns(rs, default_route) == DIRECTOR
    assert not any(a.startswith(VIP) for a in netns.run_in_netns(rs, _addresses, "lo"))
    again = _lvsmail(rs, "realserver", "join", *common, "--dry-run")
    assert again.returncode == 0 and "nothing to change" in again.stdout
    left = _lvsmail(rs, "realserver", "leave", "--root", root, "--state-file", state)
    assert left.returncode == 0, left.stderr
    assert netns.run_in_netns(rs, default_route) == GW
    assert not os.path.exists(state)
    assert os.listdir(os.path.join(root, "etc/systemd/system")) == []


def _postfix_instance(d: str) -> str:
    """A private Postfix configuration directory (not started yet)."""
    conf = f"{d}/postfix"
    for sub in ("postfix", "spool", "data"):
        os.makedirs(f"{d}/{sub}")
    shutil.chown(f"{d}/data", "postfix", "postfix")
    with open(f"{conf}/main.cf", "w") as f:
        f.write(textwrap.dedent(f"""\
            compatibility_level = 3.6
            queue_directory = {d}/spool
            data_directory = {d}/data
            mail_owner = postfix
            setgid_group = postdrop
            inet_interfaces = 127.0.0.1
            inet_protocols = ipv4
            myhostname = rs1.example.org
            alias_maps =
            alias_database =
            smtp_dns_support_level = disabled
            smtpd_peername_lookup = no
            maillog_file = {d}/postfix.log
            maillog_file_prefixes = {d}
            """))
    with open(f"{conf}/master.cf", "w") as f:
        f.write(MASTER_CF)
    with open(f"{conf}/vmailbox", "w") as f:
        f.write("probe@example.org example.org/probe/\n")
    return conf


def _dovecot_instance(d: str) -> str:
    """A private Dovecot configuration whose conf.d join writes into; one passwd-file account."""
    conf = f"{d}/dovecot"
    for sub in ("dovecot/conf.d", "dcrun", "dcstate"):
        os.makedirs(f"{d}/{sub}")
    with open(f"{conf}/users", "w") as f:
        f.write("probe@example.org:{PLAIN}pw-Verify1\n")
    os.chmod(f"{conf}/users", 0o600)
    shutil.chown(f"{conf}/users", "dovecot", "dovecot")
    with open(f"{conf}/dovecot.conf", "w") as f:
        f.write(textwrap.dedent(f"""\
            base_dir = {d}/dcrun
            state_dir = {d}/dcstate
            log_path = {d}/dovecot.log
            protocols = imap
            listen = *
            ssl = no
            disable_plaintext_auth = no
            auth_mechanisms = plain login
            passdb {{
              driver = passwd-file
              args = scheme=PLAIN username_format=%u {conf}/users
            }}
            userdb {{
              driver = static
              args = uid=65534 gid=65534 home={d}/store/boxes/%d/%n
            }}
            default_internal_user = dovecot
            default_login_user = dovenull
            !include_try conf.d/*.conf
            """))
    return f"{conf}/dovecot.conf"


def test_dr_join_configures_real_postfix_and_dovecot_and_verify_delivers_and_fetches(lan, instance_dir):
    if not (shutil.which("postfix") and shutil.which("dovecot")):
        pytest.skip("needs postfix and dovecot-imapd (deploy/setup installs them)")
    gw, rs = lan
    d = instance_dir
    pf = _postfix_instance(d)
    dc = _dovecot_instance(d)
    os.makedirs(f"{d}/store/boxes")
    nobody = pwd.getpwnam("nobody")
    os.chown(f"{d}/store/boxes", nobody.pw_uid, nobody.pw_gid)
    root = f"{d}/root"
    for sub in ("etc/sysctl.d", "etc/systemd/system", "var/www/html"):
        os.makedirs(f"{root}/{sub}")
    cfg = f"{d}/cluster.yaml"
    with open(cfg, "w") as f:
        f.write(textwrap.dedent(f"""\
            cluster: rjdr
            vips: [{VIP}]
            services:
              - {{name: smtp, vip: {VIP}, port: 25, forwarding: dr, realservers: [{RS}]}}
              - {{name: imap, vip: {VIP}, port: 143, forwarding: dr, realservers: [{RS}]}}
              - {{name: web, vip: {VIP}, port: 80, forwarding: dr, realservers: [{RS}]}}
            realserver: {{directors: [{DIRECTOR}]}}
            mail:
              hostname: clustermail.example.org
              domain: example.org
              mailbox: {{layout: virtual, root: {d}/store/boxes, maps: "texthash:{pf}/vmailbox", owner: nobody}}
              storage: {{path: {d}/store, type: local}}
              max_daemons: 10
              health_page: {{path: /var/www/html/solicitud.html, text: test page}}
            """))
    main_cf_before = open(f"{pf}/main.cf").read()
    state = f"{d}/state.json"
    common = ["-c", cfg, "--address", RS, "--root", root, "--state-file", state, "--postfix-config-dir", pf,
              "--dovecot-config", dc]
    before = netns.run_in_netns(rs, lambda: {k: ProcSysctl().read(k) for k in (
        "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.eth0.arp_announce")})

    t0 = time.monotonic()
    joined = _lvsmail(rs, "realserver", "join", *common)
    join_seconds = time.monotonic() - t0
    assert joined.returncode == 0, joined.stderr + joined.stdout
    assert "joined:" in joined.stdout and "VIP 192.0.2.33: no ARP answer on eth0" in joined.stdout
    assert "clustermail.example.org" in open(f"{pf}/main.cf").read()
    assert open(f"{root}/var/www/html/solicitud.html").read().count("test page") == 2
    assert os.path.exists(f"{d}/store/.lvsmail-cluster")

    # Seen from outside: nobody answers ARP for the VIP, the real server answers for its own address.
    from lvsmail.lab.capture import arp_probe

    assert arp_probe(gw, "lan", GW, RS)
    assert arp_probe(gw, "lan", GW, VIP) == []

    started = []
    try:
        up = subprocess.run(["ip", "netns", "exec", rs, "postfix", "-c", pf, "start"], capture_output=True,
                            text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        started.append("postfix")
        err = open(f"{d}/dovecot.stderr", "w")
        dovecot = subprocess.Popen(["ip", "netns", "exec", rs, "dovecot", "-F", "-c", dc], stdout=err, stderr=err,
                                   stdin=subprocess.DEVNULL)
        started.append(dovecot)
        _wait_port(rs, VIP, 25, f"{d}/postfix.log")
        _wait_port(rs, VIP, 143, f"{d}/dovecot.log")

        # Traffic to the VIP from the LAN is accepted (as DR delivers it: routed to the real server).
        def greet_via_real():
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.route("replace", dst=f"{VIP}/32", gateway=RS)
            with socket.create_connection((VIP, 25), timeout=10) as c:
                return c.recv(200).decode()

        assert netns.run_in_netns(gw, greet_via_real).startswith("220 clustermail.example.org")

        creds = f"{d}/verify.creds"
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"user=probe@example.org\npassword=pw-Verify1\n")
        os.close(fd)
        verified = _lvsmail(rs, "realserver", "verify", "-c", cfg, "--address", RS, "--mailbox",
                            "probe@example.org", "--credentials", creds, "--timeout", "20")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "ok   smtp deliver 192.0.2.33:25" in verified.stdout
        assert "ok   imap 192.0.2.33:143 fetch" in verified.stdout
        print(f"join {join_seconds:.2f} s\n{verified.stdout}")

        again = _lvsmail(rs, "realserver", "join", *common, "--no-reload")
        assert again.returncode == 0 and "nothing to change: already joined" in again.stdout, again.stdout
    finally:
        if "postfix" in started:
            subprocess.run(["ip", "netns", "exec", rs, "postfix", "-c", pf, "stop"], capture_output=True, timeout=60)
        for proc in started:
            if isinstance(proc, subprocess.Popen):
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)

    left = _lvsmail(rs, "realserver", "leave", "--root", root, "--state-file", state, "--postfix-config-dir", pf,
                    "--dovecot-config", dc)
    assert left.returncode == 0, left.stderr + left.stdout
    assert open(f"{pf}/main.cf").read() == main_cf_before
    assert not os.path.exists(f"{d}/dovecot/conf.d/90-lvsmail.conf")
    assert not any(a.startswith(VIP) for a in netns.run_in_netns(rs, _addresses, "lo"))
    assert netns.run_in_netns(rs, lambda: {k: ProcSysctl().read(k) for k in before}) == before
    assert not os.path.exists(state)
