"""Golden IPVS netlink replies: the kernel's own bytes, recorded once in the lab, read by unit tests.

A hand-built reply only shows that the decoder reads what its author thought the
kernel sends; a recorded one shows what the kernel does send. Each file under
``tests/golden/ipvs`` is one reply message (``NAME.bin``) with its decoded form
beside it (``NAME.json``): every header field and attribute as a path and hex
value (``fields``), and lvsmail's own decoding (``decoded``).

Masked before recording and comparing: ``nlmsg_seq`` and ``nlmsg_pid`` (they
change with every run), and the generic netlink family id in ``nlmsg_type``
(the kernel allocates it at module load, so it depends on what loaded first);
an error's echo of the request header is masked the same way.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

from lvsmail.ipvs import wire

#: Where the golden replies live.
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "ipvs"

_CONTROL_TYPES = {wire.NLMSG_ERROR: "ERROR", wire.NLMSG_DONE: "DONE"}
_COMMAND_NAMES = {v: k[len("CMD_"):] for k, v in vars(wire).items() if k.startswith("CMD_")}


def _names(prefix: str) -> dict[int, str]:
    """Attribute number -> name, from the codec's constants that start with ``prefix``."""
    return {v: k[len(prefix):] for k, v in vars(wire).items() if k.startswith(prefix) and isinstance(v, int)}


#: enum IPVS_STATS_ATTR_* (1-based; PAD is 11).
_STATS = dict(enumerate(("CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES", "CPS", "INPPS", "OUTPPS", "INBPS",
                         "OUTBPS", "PAD"), start=1))
_TOP = _names("ATTR_")
_TOP_NESTS = {wire.ATTR_SERVICE: "SERVICE", wire.ATTR_DEST: "DEST", wire.ATTR_DAEMON: "DAEMON"}
#: Attribute names per nest, and which attributes are nests themselves (include/uapi/linux/ip_vs.h).
_NESTS = {
    "SERVICE": (_names("SVC_"), {wire.SVC_STATS: "STATS", wire.SVC_STATS64: "STATS"}),
    # IPVS_DEST_ATTR_TUN_TYPE, _TUN_PORT, _TUN_FLAGS (Linux 5.2+): the codec neither sends nor reads them.
    "DEST": ({**_names("DEST_"), 13: "TUN_TYPE", 14: "TUN_PORT", 15: "TUN_FLAGS"},
             {wire.DEST_STATS: "STATS", wire.DEST_STATS64: "STATS"}),
    "DAEMON": (_names("DAEMON_"), {}),
    "STATS": (_STATS, {}),
}


def messages(datagram: bytes) -> list[bytes]:
    """The netlink messages of one datagram, each from its header to its end."""
    return [bytes(datagram[payload - 16:end]) for _, _, _, payload, end in wire.iter_messages(datagram, len(datagram))]


def mask(message: bytes) -> bytes:
    """One message with its sequence number, port id and family id zeroed (see the module docstring)."""
    out = bytearray(message)
    length, kind, flags, _seq, _pid = wire.NLMSG_HDR.unpack_from(out, 0)
    wire.NLMSG_HDR.pack_into(out, 0, length, kind if kind in _CONTROL_TYPES else 0, flags, 0, 0)
    if kind == wire.NLMSG_ERROR and len(out) >= 20 + 16:
        r_len, r_kind, r_flags, _, _ = wire.NLMSG_HDR.unpack_from(out, 20)
        wire.NLMSG_HDR.pack_into(out, 20, r_len, r_kind if r_kind in _CONTROL_TYPES else 0, r_flags, 0, 0)
    return bytes(out)


def _walk(buf: bytes, off: int, end: int, path: str, names: dict[int, str], nests: dict[int, str],
          out: dict[str, str]) -> None:
    """Every attribute in buf[off:end] as ``path/NAME`` -> hex, descending into the known nests."""
    seen: dict[str, int] = {}
    while off + 4 <= end:
        length, kind = wire.NLA_HDR.unpack_from(buf, off)
        if length < 4 or off + length > end:
            out[f"{path}/@{off}"] = f"bad attribute length {length}"
            return
        number = kind & wire.NLA_TYPE_MASK
        name = names.get(number, f"#{number}")
        seen[name] = seen.get(name, 0) + 1
        here = (f"{path}/{name}" if path else name) + (f"[{seen[name] - 1}]" if seen[name] > 1 else "")
        body = (off + 4, off + length)
        inner = nests.get(number)
        if inner is not None:
            out[f"{here}.nla_type"] = f"{kind:#06x}"
            sub_names, sub_nests = _NESTS[inner]
            _walk(buf, *body, here, sub_names, sub_nests, out)
        else:
            out[here] = buf[body[0]:body[1]].hex()
        off += (length + 3) & ~3


def fields(message: bytes) -> dict[str, str]:
    """Every header field and attribute of one (masked) message, as path -> value, in wire order."""
    length, kind, flags, seq, pid = wire.NLMSG_HDR.unpack_from(message, 0)
    out = {"nlmsghdr.len": str(length), "nlmsghdr.type": str(kind), "nlmsghdr.flags": f"{flags:#06x}",
           "nlmsghdr.seq": str(seq), "nlmsghdr.pid": str(pid)}
    if kind == wire.NLMSG_ERROR:
        out["error.errno"] = str(-struct.unpack_from("=i", message, 16)[0])
        if len(message) >= 36:
            r = wire.NLMSG_HDR.unpack_from(message, 20)
            out.update({f"error.request.{n}": str(v) for n, v in zip(("len", "type", "flags", "seq", "pid"), r)})
        if len(message) > 36:
            out["error.rest"] = message[36:].hex()
    elif kind == wire.NLMSG_DONE:
        out["done.payload"] = message[16:length].hex()
    else:
        cmd, version, reserved = wire.GENL_HDR.unpack_from(message, 16)
        out.update({"genlmsghdr.cmd": _COMMAND_NAMES.get(cmd, str(cmd)), "genlmsghdr.version": str(version),
                    "genlmsghdr.reserved": str(reserved)})
        _walk(message, 20, length, "", _TOP, _TOP_NESTS, out)
    return out


def first_difference(got: bytes, want: bytes) -> str | None:
    """The first field (in wire order) where two messages differ, as ``FIELD: got X, golden Y``; None if equal."""
    if got == want:
        return None
    a, b = fields(got), fields(want)
    for path in list(b) + [p for p in a if p not in b]:
        if a.get(path) != b.get(path):
            return f"{path}: got {a.get(path, '(absent)')}, golden {b.get(path, '(absent)')}"
    return f"same fields, different bytes (padding?): got {got.hex()}, golden {want.hex()}"


def _plain(value):
    """A decoder's result (dataclasses, tuples) as JSON values."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return [[_plain(k), _plain(v)] for k, v in value.items()]
    return value


def decoded(message: bytes, service_af: int = 0) -> dict:
    """lvsmail's decoding of one message: what the director would make of it."""
    kind = wire.NLMSG_HDR.unpack_from(message, 0)[1]
    payload, end = 16, len(message)
    if kind == wire.NLMSG_ERROR:
        return {"errno": wire.error_code(message, payload)}
    if kind == wire.NLMSG_DONE:
        return {}
    cmd = wire.GENL_HDR.unpack_from(message, 16)[0]
    if cmd in (wire.CMD_NEW_SERVICE, wire.CMD_GET_SERVICE):
        return {"service": _plain(wire.decode_service(message, payload, end, counters=True))}
    if cmd in (wire.CMD_NEW_DEST, wire.CMD_GET_DEST):
        return {"dest": _plain(wire.decode_dest(message, payload, end, service_af, counters=True)),
                "fast": _plain(wire.DestDecoder().decode(message, payload, end, service_af, True))}
    if cmd in (wire.CMD_NEW_DAEMON, wire.CMD_GET_DAEMON):
        return {"daemon": _plain(wire.decode_daemon(message, payload, end))}
    if cmd in (wire.CMD_SET_CONFIG, wire.CMD_GET_CONFIG):
        return {"timeouts": _plain(wire.decode_timeouts(message, payload, end))}
    raise ValueError(f"no decoder for generic netlink command {cmd}")


def record(name: str, message: bytes, directory: Path, service_af: int = 0, **meta) -> None:
    """Write ``NAME.bin`` and ``NAME.json`` (fields, decoded form, ``meta`` such as the kernel release)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.bin").write_bytes(message)
    doc = {**meta, "service_af": service_af, "fields": fields(message), "decoded": decoded(message, service_af)}
    (directory / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def load(name: str, directory: Path = GOLDEN_DIR) -> tuple[bytes, dict]:
    """A golden message and its decoded form."""
    return (directory / f"{name}.bin").read_bytes(), json.loads((directory / f"{name}.json").read_text())


def names(directory: Path = GOLDEN_DIR) -> list[str]:
    """Every golden message recorded in ``directory``."""
    return sorted(p.stem for p in directory.glob("*.bin"))
