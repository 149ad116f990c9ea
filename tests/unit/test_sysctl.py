"""The sysctl backends list a level below a key the way /proc/sys does, and fail with one error kind."""

import pytest

from lvsmail.net.sysctl import FakeSysctl, ProcSysctl, SysctlError


def test_proc_sysctl_lists_a_directory_with_dots_escaped(tmp_path):
    conf = tmp_path / "net" / "ipv4" / "conf"
    for name in ("all", "eth0", "eth0.100"):
        (conf / name).mkdir(parents=True)
        (conf / name / "rp_filter").write_text("1\n")
    sysctl = ProcSysctl(tmp_path)
    assert sysctl.children("net.ipv4.conf") == ["all", "eth0", "eth0/100"]
    assert sysctl.read("net.ipv4.conf.eth0/100.rp_filter") == "1"


@pytest.mark.parametrize("prefix", ["net.ipv4.vs", "net.ipv4.conf.all.rp_filter"])
def test_proc_sysctl_refuses_what_is_not_a_directory(tmp_path, prefix):
    (tmp_path / "net" / "ipv4" / "conf" / "all").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "conf" / "all" / "rp_filter").write_text("1\n")
    with pytest.raises(SysctlError, match="no sysctl directory " + prefix):
        ProcSysctl(tmp_path).children(prefix)


def test_proc_sysctl_read_that_fails_is_a_sysctl_error_naming_the_key(tmp_path):
    # Any failed read (here a directory; on a kernel, a write-only key such as net.ipv4.route.flush,
    # EACCES) is a SysctlError, as a failed write is, so callers catch one kind.
    (tmp_path / "net" / "ipv4" / "conf").mkdir(parents=True)
    with pytest.raises(SysctlError, match="cannot read net.ipv4.conf: Is a directory"):
        ProcSysctl(tmp_path).read("net.ipv4.conf")
    with pytest.raises(SysctlError, match="no sysctl net.ipv4.ip_forward"):
        ProcSysctl(tmp_path).read("net.ipv4.ip_forward")


def test_fake_sysctl_lists_the_next_level_of_its_keys():
    sysctl = FakeSysctl({"net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.eth0/100.rp_filter": "2",
                         "net.ipv4.conf.eth0.arp_ignore": "1", "net.ipv4.ip_forward": "1"})
    assert sysctl.children("net.ipv4.conf") == ["all", "eth0", "eth0/100"]
    assert sysctl.children("net.ipv4") == ["conf", "ip_forward"]
    with pytest.raises(SysctlError):
        sysctl.children("net.ipv4.ip_forward")
    with pytest.raises(SysctlError):
        sysctl.children("net.ipv6.conf")
