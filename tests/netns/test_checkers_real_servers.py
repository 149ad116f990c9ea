"""Health checkers against Debian's Postfix and Dovecot, run privately on 127.0.0.1 high ports.

Each server gets its own configuration, spool and state directories in a
temporary directory (nothing under /etc is changed, no system service is
started), listens on ephemeral loopback ports only, and is stopped at the end.
Needs root (both daemons start as root and drop privileges) and the packages
``postfix``, ``dovecot-imapd`` and ``dovecot-pop3d``; skips with the reason otherwise.

Postfix is also run behind postscreen with the pregreet test enforced
(``postscreen_greet_action = drop``): a checker that spoke before the end of
the multi-line greeting would be disconnected with 521.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from peers import LOOPBACK, Certificates, run

from lvsmail.health import Credentials, run_check
from lvsmail.spec import CheckSpec

CREDS = Credentials("check@example.test", "pw-S3cret!")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="Postfix and Dovecot start as root")


def _free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_listening(ports, log: str, seconds: float = 15.0) -> None:
    """Poll until every port accepts connections (bounded), else fail with the server's log."""
    deadline = time.monotonic() + seconds
    for port in ports:
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    text = open(log).read()[-2000:] if os.path.exists(log) else "(no log)"
                    pytest.fail(f"port {port} not listening after {seconds:.0f} s; log:\n{text}")
                time.sleep(0.05)


def _private_dir(prefix: str) -> str:
    """A short path (unix socket names are limited to 108 bytes) the daemons' users can traverse."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A test CA and a certificate for mail.example.test."""
    pytest.importorskip("trustme", reason="pip install trustme (listed in the test extras)")
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def postfix(certs):
    """Postfix: plain smtp, smtps, submission (TLS required) and postscreen; yields {name: port}."""
    if not shutil.which("postfix"):
        pytest.skip("Postfix not installed (apt-get install postfix)")
    d = _private_dir("lvspf")
    ports = {name: _free_port() for name in ("smtp", "smtps", "submission", "postscreen")}
    os.makedirs(f"{d}/conf")
    os.makedirs(f"{d}/spool")
    os.makedirs(f"{d}/data")
    shutil.chown(f"{d}/data", "postfix", "postfix")
    certs.cert.private_key_and_cert_chain_pem.write_to_path(f"{d}/conf/cert.pem")
    os.chmod(f"{d}/conf/cert.pem", 0o600)
    with open(f"{d}/conf/main.cf", "w") as f:
        f.write(f"""compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
myhostname = mx.example.test
mydestination =
alias_maps =
alias_database =
maillog_file = {d}/postfix.log
maillog_file_prefixes = {d}
smtpd_tls_chain_files = {d}/conf/cert.pem
smtpd_tls_security_level = may
postscreen_access_list =
postscreen_greet_action = drop
postscreen_greet_wait = 1s
postscreen_greet_banner = $smtpd_banner (postscreen)
postscreen_cache_map = btree:$data_directory/postscreen_cache
""")
    with open(f"{d}/conf/master.cf", "w") as f:
        f.write(f"""{LOOPBACK}:{ports['smtp']} inet n - n - - smtpd
{LOOPBACK}:{ports['smtps']} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
{LOOPBACK}:{ports['submission']} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt
{LOOPBACK}:{ports['postscreen']} inet n - n - 1 postscreen
smtpd pass - - n - - smtpd
cleanup unix n - n - 0 cleanup
rewrite unix - - n - - trivial-rewrite
anvil unix - - n - 1 anvil
tlsmgr unix - - n 1000? 1 tlsmgr
scache unix - - n - 1 scache
proxymap unix - - n - - proxymap
postlog unix-dgram n - n - 1 postlogd
""")
    started = subprocess.run(["postfix", "-c", f"{d}/conf", "start"], capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        log = open(f"{d}/postfix.log").read()[-2000:] if os.path.exists(f"{d}/postfix.log") else ""
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"postfix start failed: {started.stderr}{log}")
    try:
        _wait_listening(ports.values(), f"{d}/postfix.log")
        yield ports, f"{d}/postfix.log"
    finally:
        subprocess.run(["postfix", "-c", f"{d}/conf", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(certs):
    """Dovecot: imap, imaps, pop3, pop3s with one passwd-file account; yields {name: port}."""
    if not shutil.which("dovecot"):
        pytest.skip("Dovecot not installed (apt-get install dovecot-imapd dovecot-pop3d)")
    d = _private_dir("lvsdc")
    ports = {name: _free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
    for sub in ("run", "state", "home"):
        os.makedirs(f"{d}/{sub}")
    shutil.chown(f"{d}/home", 65534, 65534)
    certs.cert.private_key_and_cert_chain_pem.write_to_path(f"{d}/cert.pem")
    os.chmod(f"{d}/cert.pem", 0o600)
    with open(f"{d}/users", "w") as f:
        f.write(f"{CREDS.user}:{{PLAIN}}{CREDS.password}\n")
    os.chmod(f"{d}/users", 0o600)
    shutil.chown(f"{d}/users", "dovecot", "dovecot")  # read by the auth process, which runs as dovecot
    with open(f"{d}/dovecot.conf", "w") as f:
        f.write(f"""base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap pop3
listen = {LOOPBACK}
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/cert.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/home/%u
}}
mail_location = maildir:~/Maildir
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    port = {ports['imap']}
  }}
  inet_listener imaps {{
    port = {ports['imaps']}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {ports['pop3']}
  }}
  inet_listener pop3s {{
    port = {ports['pop3s']}
    ssl = yes
  }}
}}
""")
    # In the foreground (-F) as our child: no daemon outlives the test, whatever fails.
    with open(f"{d}/stderr", "w") as err:
        proc = subprocess.Popen(["dovecot", "-F", "-c", f"{d}/dovecot.conf"], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)
    try:
        _wait_listening(ports.values(), f"{d}/dovecot.log")
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        shutil.rmtree(d, ignore_errors=True)


def _tls(certs, **kw) -> dict:
    return {"ca_file": certs.ca_file, "server_name": Certificates.NAME, **kw}


def check(kind: str, port: int, credentials=None, **kw):
    """Run one check with a timeout above Dovecot's 2 s delay after a failed login."""
    return run(run_check(CheckSpec(type=kind, timeout=5.0, **kw), LOOPBACK, port, credentials))


# --- Postfix -----------------------------------------------------------------------------------

def test_postfix_smtp_passes(postfix):
    ports, _ = postfix
    result = check("smtp", ports["smtp"])
    assert result.ok, result.reason
    assert result.reason == f"smtp 127.0.0.1:{ports['smtp']}: ok: greeting, EHLO, QUIT"


def test_postfix_smtp_with_starttls_passes(postfix, certs):
    ports, _ = postfix
    result = check("smtp", ports["smtp"], **_tls(certs, tls="starttls"))
    assert result.ok, result.reason


def test_postfix_smtps_passes(postfix, certs):
    ports, _ = postfix
    result = check("smtps", ports["smtps"], **_tls(certs, tls="implicit"))
    assert result.ok, result.reason


def test_postfix_submission_requires_and_gets_starttls(postfix, certs):
    ports, _ = postfix
    result = check("submission", ports["submission"], **_tls(certs, tls="starttls"))
    assert result.ok, result.reason
    assert "STARTTLS, EHLO" in result.reason


def test_postfix_postscreen_pregreet_test_passes(postfix):
    ports, log = postfix
    result = check("smtp", ports["postscreen"])
    assert result.ok, result.reason
    assert result.latency >= 1.0  # postscreen_greet_wait held the final 220 back
    assert "PREGREET" not in open(log).read(), "the checker talked before the greeting ended"


# --- Dovecot -----------------------------------------------------------------------------------

def test_dovecot_imap_login_and_examine_passes(dovecot):
    result = check("imap", dovecot["imap"], CREDS)
    assert result.ok, result.reason
    assert result.reason == f"imap 127.0.0.1:{dovecot['imap']}: ok: greeting, CAPABILITY, LOGIN, EXAMINE INBOX, LOGOUT"


def test_dovecot_imap_login_rejected_fails(dovecot):
    result = check("imap", dovecot["imap"], Credentials(CREDS.user, "wrong-password"))
    assert not result.ok
    assert result.reason == (f"imap 127.0.0.1:{dovecot['imap']}: "
                             f"LOGIN failed: NO [AUTHENTICATIONFAILED] Authentication failed.")


def test_dovecot_imap_starttls_passes(dovecot, certs):
    result = check("imap", dovecot["imap"], CREDS, **_tls(certs, tls="starttls"))
    assert result.ok, result.reason


def test_dovecot_imaps_passes(dovecot, certs):
    result = check("imaps", dovecot["imaps"], CREDS, **_tls(certs, tls="implicit"))
    assert result.ok, result.reason


def test_dovecot_imaps_wrong_name_fails(dovecot, certs):
    result = check("imaps", dovecot["imaps"], CREDS, **_tls(certs, tls="implicit", server_name="imap.other.test"))
    assert not result.ok and "certificate verify failed: Hostname mismatch" in result.reason


def test_dovecot_pop3_user_pass_stat_passes(dovecot):
    result = check("pop3", dovecot["pop3"], CREDS)
    assert result.ok, result.reason


def test_dovecot_pop3_password_rejected_fails(dovecot):
    result = check("pop3", dovecot["pop3"], Credentials(CREDS.user, "wrong-password"))
    assert result.reason == f"pop3 127.0.0.1:{dovecot['pop3']}: PASS failed: -ERR [AUTH] Authentication failed."


def test_dovecot_pop3_stls_and_pop3s_pass(dovecot, certs):
    assert check("pop3", dovecot["pop3"], CREDS, **_tls(certs, tls="starttls")).ok
    assert check("pop3s", dovecot["pop3s"], CREDS, **_tls(certs, tls="implicit")).ok
