"""The lab's pure parts: VM command lines, packet parsing, the kernel table, cluster files (no root)."""

import shlex
import struct
from pathlib import Path

import pytest

from lvsmail.lab import vm
from lvsmail.lab.capture import (
    ETH_P_IP,
    IPPROTO_IPIP,
    TCP_ACK,
    TCP_SYN,
    arp_request,
    parse_frame,
    parse_ip,
)
from lvsmail.lab.cluster import LabService, cluster_yaml, parse_proc_ip_vs
from lvsmail.lab.smtp import greeting_server
from lvsmail.lab.topology import Topology, real_host

# -- the VM runner ---------------------------------------------------------------

def test_find_kernel_picks_the_newest_with_modules(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-56-amd64", "vmlinuz-6.10.0-1-amd64", "vmlinuz-6.1.0-56-rt"):
        (boot / name).write_text("")
    for release in ("6.1.0-9-amd64", "6.1.0-56-amd64"):  # 6.10.0-1 has no modules installed
        (modules / release).mkdir(parents=True)
    assert vm.find_kernel(boot, modules).name == "vmlinuz-6.1.0-56-amd64"
    (modules / "6.10.0-1-amd64").mkdir()
    assert vm.find_kernel(boot, modules).name == "vmlinuz-6.10.0-1-amd64"


def test_find_kernel_without_kernels_says_what_to_install(tmp_path):
    with pytest.raises(vm.LabError, match="apt-get install linux-image-amd64"):
        vm.find_kernel(tmp_path)


def test_vng_command_never_uses_kvm_and_mounts_the_output_dir_writable():
    argv = vm.vng_argv(Path("/boot/vmlinuz-6.1.0-56-amd64"), Path("/out/x.sh"), [Path("/out")], memory="3G")
    assert "--disable-kvm" in argv
    assert argv[argv.index("--memory") + 1] == "3G"
    assert argv[argv.index("--rwdir") + 1] == "/out"
    assert argv[-2:] == ["--exec", "sh /out/x.sh"]


def test_vng_of_the_running_interpreter_comes_before_one_on_path(tmp_path, monkeypatch):
    venv_bin, other_bin = tmp_path / "venv-bin", tmp_path / "other-bin"
    for d in (venv_bin, other_bin):
        d.mkdir()
        (d / "vng").write_text("#!/bin/sh\n")
        (d / "vng").chmod(0o755)
    monkeypatch.setattr(vm, "interpreter_bin", lambda: str(venv_bin))
    monkeypatch.setenv("PATH", str(other_bin))
    assert vm.vng_argv(Path("/boot/vmlinuz"), Path("/out/x.sh"), [])[0] == str(venv_bin / "vng")


def test_vng_finds_its_own_helpers_in_this_interpreters_bin():
    env = vm.interpreter_first({"PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert env["PATH"] == f"{Path(vm.sys.executable).parent}:/usr/bin:/bin" and env["HOME"] == "/root"


def test_on_a_lab_capable_kernel_the_command_finds_this_interpreter_first():
    env = vm.host_env(Path("/out"), {"PATH": "/root/.pyenv/shims:/usr/bin", "CI": "true"})
    assert env["PATH"].split(":") == [str(Path(vm.sys.executable).parent), "/root/.pyenv/shims", "/usr/bin"]
    assert env["LVSMAIL_PYTHON"] == vm.sys.executable and env["CI"] == "true"
    assert env["LVSMAIL_IN_LAB"] == "1" and env["LVSMAIL_LAB_OUT"] == "/out"


def test_guest_script_runs_the_command_in_the_repo_and_records_its_status():
    env = vm.guest_env(Path("/out"), {"CI": "true", "LVSMAIL_REQUIRE_LAB": "1", "SECRET_TOKEN": "x"})
    script = vm.guest_script(["python3", "-m", "pytest", "tests/kernel", "-k", "a b"], env, Path("/repo"),
                             Path("/out/st"))
    lines = script.splitlines()
    assert "export CI=true" in lines and "export LVSMAIL_REQUIRE_LAB=1" in lines
    assert "SECRET_TOKEN" not in script  # only the lab's own variables are passed on
    assert env["PATH"].split(":")[0] == str(Path(vm.sys.executable).parent)
    assert "cd /repo || exit 126" in lines
    assert shlex.join(["python3", "-m", "pytest", "tests/kernel", "-k", "a b"]) in lines
    assert lines[-2:] == ["echo $rc > /out/st", "exit $rc"]
    assert lines.index("rc=$?") == lines.index(shlex.join(["python3", "-m", "pytest", "tests/kernel", "-k", "a b"])) + 1


# -- packet parsing --------------------------------------------------------------

def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0, src, dst) + payload


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 0, 0, 0)


def test_ipip_frame_is_parsed_with_outer_and_inner_headers():
    inner = ipv4(bytes([203, 0, 113, 10]), bytes([192, 0, 2, 33]), 6, tcp(40000, 25, TCP_SYN))
    outer = ipv4(bytes([198, 51, 100, 1]), bytes([198, 51, 100, 20]), IPPROTO_IPIP, inner)
    frame = parse_frame(b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ETH_P_IP) + outer)
    assert frame.dst == "02:02:02:02:02:02"
    assert (frame.ip.src, frame.ip.dst, frame.ip.proto) == ("198.51.100.1", "198.51.100.20", 4)
    assert (frame.ip.inner.src, frame.ip.inner.dst) == ("203.0.113.10", "192.0.2.33")
    assert frame.ip.inner.tcp.dport == 25 and frame.ip.inner.tcp.syn
    assert frame.ip.tcp is None


def test_syn_ack_is_not_a_syn():
    pkt = parse_ip(ipv4(bytes(4), bytes(4), 6, tcp(25, 40000, TCP_SYN | TCP_ACK)))
    assert not pkt.tcp.syn


def test_ipv6_tcp_packet():
    hdr = struct.pack("!IHBB", 6 << 28, 20, 6, 64)
    src = bytes.fromhex("20010db8000c00000000000000000010")
    dst = bytes.fromhex("20010db8000f00000000000000000033")
    pkt = parse_ip(hdr + src + dst + tcp(40000, 25, TCP_SYN))
    assert (pkt.version, pkt.src, pkt.dst, pkt.tcp.dport) == (6, "2001:db8:c::10", "2001:db8:f::33", 25)


def test_arp_request_round_trips_through_the_parser():
    frame = parse_frame(arp_request(b"\x02\x00\x00\x00\x00\x01", "198.51.100.254", "192.0.2.33"))
    assert frame.dst == "ff:ff:ff:ff:ff:ff"
    assert (frame.arp.op, frame.arp.sender_ip, frame.arp.target_ip) == (1, "198.51.100.254", "192.0.2.33")


def test_short_or_foreign_frames_do_not_crash_the_parser():
    assert parse_frame(b"\x00" * 10) is None
    assert parse_frame(b"\x00" * 12 + b"\x08\x00" + b"\x45").ip is None


# -- the kernel's table ------------------------------------------------------------

PROC = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C0000221:0019 wlc persistent 120
  -> C6336424:0019      Tunnel  1      3          1
  -> C6336414:0019      Tunnel  2      0          0
TCP  [2001:0db8:000f:0000:0000:0000:0000:0033]:0019 wlc
  -> [2001:0db8:0005:0000:0000:0000:0000:0020]:0019      Route   1      4          0
FWM  00000001 rr
"""


def test_proc_ip_vs_is_parsed_into_ipvsadm_keys():
    table = parse_proc_ip_vs(PROC)
    assert list(table) == ["TCP 192.0.2.33:25", "TCP [2001:db8:f::33]:25", "FWM 1"]
    smtp = table["TCP 192.0.2.33:25"]
    assert (smtp.scheduler, smtp.persistent_jiffies) == ("wlc", 120)
    assert smtp.dest("198.51.100.36").active == 3 and smtp.dest("198.51.100.36").inactive == 1
    assert smtp.dest("198.51.100.20").weight == 2
    six = table["TCP [2001:db8:f::33]:25"]
    assert six.persistent_jiffies is None and six.dest("2001:db8:5::20").forward == "Route"


# -- cluster files for a topology -------------------------------------------------

def test_generated_cluster_file_is_valid_and_matches_the_topology():
    from lvsmail.config import parse_cluster

    topo = Topology("dr", reals=5, prefix="unit")
    text = cluster_yaml(topo, [LabService("smtp", 25, {"rs1": 1, "rs5": 3}, persistent=120, check=True),
                               LabService("smtp6", 25, {"rs2": 1}, family="inet6")])
    spec = parse_cluster(text)
    smtp, smtp6 = spec.services
    assert (smtp.vip, smtp.port, smtp.persistent, smtp.forwarding) == ("192.0.2.33", 25, 120, "dr")
    assert [(r.address, r.weight) for r in smtp.realservers] == [("198.51.100.20", 1), ("198.51.100.40", 3)]
    assert smtp.check.type == "smtp"
    assert smtp6.vip == "2001:db8:f::33" and smtp6.realservers[0].address == "2001:db8:5::32"


def test_real_server_addresses_follow_the_seed_deployment():
    assert [real_host(i) for i in range(6)] == [20, 32, 35, 36, 40, 41]


def test_topology_names_are_unique_per_instance():
    assert Topology("tun").prefix != Topology("tun").prefix


def test_greeting_names_the_server():
    assert greeting_server("rs2 lvsmail lab sink") == "rs2"
