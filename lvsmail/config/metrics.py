"""The ``metrics:`` section: where the director's Prometheus endpoint listens (absent: no endpoint).

``metrics: {}`` (or ``metrics:`` alone) listens on 127.0.0.1:9712; ``listen``
takes ``address:port`` or ``[v6address]:port``. The endpoint has no
authentication, so a wildcard address is accepted but should sit behind a
firewall: the default keeps it on the director itself.
"""

from __future__ import annotations

import ipaddress

from lvsmail.config.fields import Reader, describe
from lvsmail.config.keys import names
from lvsmail.config.tree import Node
from lvsmail.spec import DEFAULT_METRICS_LISTEN, MetricsSpec

SECTION_KEYS = names("metrics")


def read_metrics(r: Reader, node: Node) -> MetricsSpec | None:
    """Validate ``metrics:``; every problem is recorded on ``r``."""
    if node.value is None:  # "metrics:" alone: the defaults
        return MetricsSpec()
    e = r.mapping(node, "metrics", SECTION_KEYS)
    if e is None:
        return None
    if "listen" not in e:
        return MetricsSpec()
    text = r.string(e["listen"], "metrics.listen")
    if text is None:
        return None
    try:
        parse_listen(text)
    except ValueError as exc:
        r.error(e["listen"], "metrics.listen", f"{describe(e['listen'])}: {exc}")
        return None
    return MetricsSpec(listen=text.strip())


def dump_metrics(spec: MetricsSpec) -> dict:
    """``metrics:`` as an administrator writes it: the default address left out."""
    return {} if spec.listen == DEFAULT_METRICS_LISTEN else {"listen": spec.listen}


def parse_listen(text: str) -> tuple[str, int]:
    """(address, port) of ``address:port`` or ``[v6]:port``; ValueError says what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [address]:port for an IPv6 address")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError("expected address:port (IPv6 addresses in brackets: [2001:db8::1]:9712)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (lvsmail never resolves host names)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return str(addr), int(port)
