"""State-file names and the atomic writer (lvsmail.statefiles)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lvsmail import statefiles
from lvsmail.statefiles import DEFAULT_STATE_DIR, StateDir, write_json, write_text


def test_each_state_file_is_named_after_the_cluster_file():
    d = StateDir.of("/run/x", "/etc/lvsmail/mail.yaml")
    assert (d.root, d.stem) == (Path("/run/x"), "mail")
    assert {name: str(getattr(d, name)) for name in statefiles.SUFFIXES} == {
        "owned": "/run/x/mail.owned.json", "overrides": "/run/x/mail.overrides.json",
        "members": "/run/x/mail.members.json", "outages": "/run/x/mail.outages.jsonl",
        "failover": "/run/x/mail.failover.json", "kernel": "/run/x/mail.kernel.json",
        "health": "/run/x/mail.health.json", "reload": "/run/x/mail.reload.json",
        "socket": "/run/x/mail.sock", "socket_pointer": "/run/x/mail.sock.path",
    }


def test_the_default_state_directory_is_run_lvsmail():
    assert DEFAULT_STATE_DIR == "/run/lvsmail"


def test_the_fallback_socket_is_unique_per_state_directory(tmp_path):
    a = StateDir.of(tmp_path / "a", "mail.yaml").fallback_socket()
    b = StateDir.of(tmp_path / "b", "mail.yaml").fallback_socket()
    assert a.parent == Path("/run/lvsmail-api") and a.name.endswith("-mail.sock")
    assert a != b
    assert StateDir.of(tmp_path / "a", "mail.yaml").fallback_socket(tmp_path).parent == tmp_path


def test_each_lists_one_kind_with_its_stems_sorted(tmp_path):
    for name in ("b.health.json", "a.health.json", "a.kernel.json", "c.sock", "c.sock.path", "x.health.json.tmp"):
        (tmp_path / name).write_text("{}")
    assert StateDir.each(tmp_path, "health") == [("a", tmp_path / "a.health.json"), ("b", tmp_path / "b.health.json")]
    assert StateDir.each(tmp_path, "socket") == [("c", tmp_path / "c.sock")]  # not the pointer
    assert StateDir.each(tmp_path, "socket_pointer") == [("c", tmp_path / "c.sock.path")]
    assert StateDir.each(tmp_path, "health", "b") == [("b", tmp_path / "b.health.json")]
    assert StateDir.each(tmp_path, "health", "zz") == []
    assert StateDir.each(tmp_path / "absent", "health") == []


def test_an_unknown_kind_is_a_key_error(tmp_path):
    with pytest.raises(KeyError):
        StateDir.each(tmp_path, "nonsense")


@pytest.mark.parametrize(("options", "expected"), [
    ({}, '{"b": [1, 2], "a": null}'),
    ({"indent": 1, "sort_keys": True}, '{\n "a": null,\n "b": [\n  1,\n  2\n ]\n}'),
    ({"indent": 2, "newline": True}, '{\n  "b": [\n    1,\n    2\n  ],\n  "a": null\n}\n'),
])
def test_write_json_lays_out_as_json_dumps(tmp_path, options, expected):
    path = tmp_path / "sub" / "f.json"  # the directory is created
    write_json(path, {"b": [1, 2], "a": None}, **options)
    assert path.read_text() == expected
    assert json.loads(path.read_text()) == {"b": [1, 2], "a": None}
    assert os.listdir(path.parent) == ["f.json"]  # no temporary file left


def test_write_text_replaces_the_file_and_takes_bytes(tmp_path):
    path = tmp_path / "f"
    write_text(path, "old")
    write_text(path, b"new\n")
    assert path.read_bytes() == b"new\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_json(path, [1])

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefiles.os, "write", full)
    with pytest.raises(OSError, match="No space"):
        write_json(path, [2])
    monkeypatch.undo()
    assert path.read_text() == "[1]"
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f"
    path.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_text(path, "x")
    assert path.is_dir() and os.listdir(tmp_path) == ["f"]


def test_mode_is_set_whatever_the_umask_and_an_old_temporary_file(tmp_path):
    path = tmp_path / "secret.json"
    (tmp_path / "secret.json.tmp").write_text("stale")
    os.chmod(tmp_path / "secret.json.tmp", 0o644)
    old = os.umask(0)
    try:
        write_json(path, {"k": 1}, mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == '{"k": 1}'


def test_fsync_flushes_the_temporary_file_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "f"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(statefiles.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(statefiles.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b)))
    write_text(path, "x", fsync=True)
    assert calls == ["fsync", "replace"]
    calls.clear()
    write_text(path, "y")
    assert calls == ["replace"]
    assert path.read_text() == "y"
