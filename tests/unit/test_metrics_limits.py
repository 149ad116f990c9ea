"""The Prometheus endpoint under slow and numerous connections, over real loopback sockets.

Sources are addresses of 127.0.0.0/8 (all local on Linux), so several hosts can be played without root.
"""

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from lvsmail.console import metrics


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    Gauge("lvsmail_test_up", "A gauge for the test.", registry=registry).set(1)
    httpd, thread = metrics.serve("127.0.0.1", 0, registry)
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def hold(port: int, source: str) -> socket.socket:
    """A connection that sent half a request line and waits."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.sendall(b"GET /met")
    return s


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes ``s`` (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def scrape(port: int, source: str = "127.0.0.1") -> str:
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    with s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def test_one_source_holds_at_most_its_share(endpoint):
    held = [hold(endpoint, "127.0.0.30") for _ in range(metrics.MAX_SCRAPES_PER_SOURCE)]
    extra = hold(endpoint, "127.0.0.30")
    assert closed_by_server(extra, 2.0)
    assert all(not closed_by_server(s, 0.2) for s in held)  # the first ones are still served
    assert "lvsmail_test_up 1.0" in scrape(endpoint)  # another source scrapes at once
    for s in [*held, extra]:
        s.close()


def test_when_every_slot_is_held_the_oldest_gives_way_to_a_scrape(endpoint):
    held = [hold(endpoint, f"127.0.0.{40 + i}") for i in range(metrics.MAX_SCRAPES)]
    time.sleep(0.1)
    started = time.monotonic()
    assert "lvsmail_test_up 1.0" in scrape(endpoint, "127.0.0.60")
    assert time.monotonic() - started < 2.0
    assert closed_by_server(held[0], 2.0)  # the oldest gave way
    for s in held:
        s.close()


def test_a_dripping_client_is_cut_at_the_deadline(endpoint, monkeypatch):
    """One byte every 0.1 s keeps every single read short; the whole-request deadline still ends it."""
    monkeypatch.setattr(metrics, "SCRAPE_DEADLINE", 0.6)
    s = socket.create_connection(("127.0.0.1", endpoint), timeout=5, source_address=("127.0.0.70", 0))
    started = time.monotonic()
    cut = None
    for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            cut = time.monotonic() - started
            break
        time.sleep(0.1)
    s.close()
    assert cut is not None and 0.5 < cut < 2.0


def test_threads_stay_bounded_under_many_connections(endpoint):
    before = threading.active_count()
    socks = [hold(endpoint, f"127.0.0.{80 + i % 40}") for i in range(200)]
    time.sleep(0.3)
    # at most MAX_SCRAPES serving threads and their deadline timers, whatever the number of connections
    assert threading.active_count() - before <= 2 * metrics.MAX_SCRAPES + 2
    for s in socks:
        s.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint}/metrics", timeout=5) as reply:
        assert b"lvsmail_test_up 1.0" in reply.read()
