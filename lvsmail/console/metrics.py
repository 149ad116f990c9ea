"""The director's Prometheus endpoint (``metrics:`` in the cluster file; off when absent).

Names and labels follow node_exporter's IPVS collector where they overlap
(``node_ipvs_*``, labels ``local_address``, ``local_port``, ``local_mark``,
``proto``, ``remote_address``, ``remote_port``), so dashboards written for it
keep working; the director adds what only it knows under ``lvsmail_*``:

* ``lvsmail_realserver_up{service,address,port}``: 1 up (or not checked), 0 down;
* ``lvsmail_realserver_weight{service,address,port}``: the weight in the kernel
  (absent when the server is out of the table), to see drains and quiescence;
* ``lvsmail_health_transitions_total{service,address,port}``;
* ``lvsmail_check_duration_seconds{service}``: histogram of check latencies;
* ``lvsmail_vrrp_state{vrrp_instance}``: 0 init, 1 backup, 2 master, 3 fault
  (the label is not ``instance``: Prometheus gives that to the scrape target);
* ``lvsmail_vrrp_transitions_total{vrrp_instance}``;
* ``lvsmail_vrrp_adverts_dropped_total{vrrp_instance,reason}``: adverts the receive
  guard kept from the state machine (RFC 5798 section 7.1 checks, then the rate limits;
  ``lvsmail.vrrp.guard``), so a flood on the VRRP link shows on a dashboard;
* ``lvsmail_failover_duration_seconds{kind}``: histogram of the failovers the
  director recorded for ``lvsmail availability`` (director takeovers,
  real-server removals), read from that record at scrape time so both tools
  agree; trimming the record shows as a counter reset.

Everything but the check histogram is built at scrape time from the same
snapshot ``status`` uses, so there is no second bookkeeping to drift. The
HTTP server is the standard library's WSGI server around prometheus_client's
WSGI application, on its own thread; a scrape asks the director's event loop for
the snapshot and waits at most ``SCRAPE_TIMEOUT``.

Limits (the endpoint listens on the network and has no authentication): each
connection has one deadline, ``SCRAPE_DEADLINE``, for its whole request and reply
(its socket is shut down then, however slowly the bytes came); one source address
holds at most ``MAX_SCRAPES_PER_SOURCE`` connections (more are closed unanswered);
at most ``MAX_SCRAPES`` are served at once and a new one makes the oldest give way,
so a host that opens slow connections cannot keep Prometheus out, nor make the
director start a thread per connection without bound. The request line and
headers keep the standard library's bounds (65536 bytes a line, 100 headers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

log = logging.getLogger("lvsmail.director.metrics")

#: Seconds a scrape waits for the director's snapshot.
SCRAPE_TIMEOUT = 5.0
#: Seconds for one connection's whole request and reply; then its socket is shut down.
SCRAPE_DEADLINE = 10.0
#: Connections served at once (one thread each); a new one makes the oldest give way.
MAX_SCRAPES = 8
#: Connections one source address may hold at once; more are closed unanswered.
MAX_SCRAPES_PER_SOURCE = 2
#: Check latencies: from a loopback answer (ms) to a check's usual timeout.
CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Failover durations: VRRP takeovers (about 3.6 advertisement intervals) to slow real-server removals.
FAILOVER_BUCKETS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)
VRRP_STATES = {"init": 0, "backup": 1, "master": 2, "fault": 3}
_PROTO = {"tcp": "TCP", "udp": "UDP"}


def families(snap: dict, outages=()) -> list:
    """The scrape-time metric families of one snapshot (and the recorded failovers)."""
    active = GaugeMetricFamily("node_ipvs_backend_connections_active",
                               "The current active connections by local and remote address.", labels=_BACKEND)
    inactive = GaugeMetricFamily("node_ipvs_backend_connections_inactive",
                                 "The current inactive connections by local and remote address.", labels=_BACKEND)
    weight = GaugeMetricFamily("node_ipvs_backend_weight", "The current backend weight by local and remote address.",
                               labels=_BACKEND)
    totals = {name: CounterMetricFamily(f"node_ipvs_{name}", help_) for name, help_ in (
        ("connections", "The total number of connections made."),
        ("incoming_packets", "The total number of incoming packets."),
        ("outgoing_packets", "The total number of outgoing packets."),
        ("incoming_bytes", "The total amount of incoming data."),
        ("outgoing_bytes", "The total amount of outgoing data."))}
    sums = dict.fromkeys(totals, 0)
    up = GaugeMetricFamily("lvsmail_realserver_up", "Whether the director's health checks pass (1) or not (0).",
                           labels=_RS)
    rs_weight = GaugeMetricFamily("lvsmail_realserver_weight", "The real server's weight in the kernel.", labels=_RS)
    transitions = CounterMetricFamily("lvsmail_health_transitions", "Up/down changes of a real server.", labels=_RS)
    for svc in snap["services"]:
        if svc["stats"] is not None:
            st = svc["stats"]
            for name, field in (("connections", "conns"), ("incoming_packets", "inpkts"),
                                ("outgoing_packets", "outpkts"), ("incoming_bytes", "inbytes"),
                                ("outgoing_bytes", "outbytes")):
                sums[name] += st[field]
        local = ([svc["vip"], str(svc["port"]), "", _PROTO.get(svc["protocol"], "")] if svc["fwmark"] is None
                 else ["", "0", str(svc["fwmark"]), ""])
        for rs in svc["realservers"]:
            if rs["in_kernel"]:
                labels = [*local[:2], rs["address"], str(rs["port"]), local[3], local[2]]
                active.add_metric(labels, rs["active"])
                inactive.add_metric(labels, rs["inactive"])
                weight.add_metric(labels, rs["effective_weight"])
            if rs["member"] == "fallback":
                continue
            key = [svc["name"], rs["address"], str(rs["port"])]
            up.add_metric(key, 0 if rs["up"] is False else 1)
            if rs["in_kernel"]:
                rs_weight.add_metric(key, rs["effective_weight"])
            transitions.add_metric(key, rs["transitions"])
    for name, fam in totals.items():
        fam.add_metric([], sums[name])
    out = [active, inactive, weight, *totals.values(), up, rs_weight, transitions]
    state = GaugeMetricFamily("lvsmail_vrrp_state", "VRRP role: 0 init, 1 backup, 2 master, 3 fault.",
                              labels=["vrrp_instance"])
    vrrp_transitions = CounterMetricFamily("lvsmail_vrrp_transitions", "VRRP role changes.", labels=["vrrp_instance"])
    dropped = CounterMetricFamily("lvsmail_vrrp_adverts_dropped", "VRRP adverts dropped before the state machine.",
                                  labels=["vrrp_instance", "reason"])
    for inst in (snap.get("failover") or {}).get("instances", []):
        state.add_metric([inst["name"]], VRRP_STATES.get(inst["role"], 0))
        vrrp_transitions.add_metric([inst["name"]], inst["transitions"])
        for reason, count in sorted(inst.get("adverts_dropped", {}).items()):
            dropped.add_metric([inst["name"], reason], count)
    out += [state, vrrp_transitions, dropped, failover_histogram(outages)]
    return out


_BACKEND = ["local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark"]
_RS = ["service", "address", "port"]


def failover_histogram(outages) -> HistogramMetricFamily:
    """``lvsmail_failover_duration_seconds{kind}`` from recorded outages (cumulative buckets, sum, count)."""
    fam = HistogramMetricFamily("lvsmail_failover_duration_seconds",
                                "Measured failovers: director takeovers and real-server removals.", labels=["kind"])
    by_kind: dict[str, list[float]] = {}
    for o in outages:
        by_kind.setdefault(o.kind, []).append(o.seconds)
    for kind, values in sorted(by_kind.items()):
        buckets = [(_le(b), sum(1 for v in values if v <= b)) for b in FAILOVER_BUCKETS]
        buckets.append(("+Inf", len(values)))
        fam.add_metric([kind], buckets, sum(values))
    return fam


def _le(b: float) -> str:
    return repr(float(b))


class Exporter:
    """The director's metrics: the check-latency histogram it feeds, and the HTTP endpoint when configured."""

    def __init__(self, view) -> None:
        self.view = view  # the director's DirectorView (lvsmail.console.view)
        self.registry = CollectorRegistry(auto_describe=False)
        self.checks = Histogram("lvsmail_check_duration_seconds", "Health check latency by service.", ["service"],
                                buckets=CHECK_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(self))
        self.listen: str | None = None
        self._httpd: _MetricsServer | None = None
        self.thread: threading.Thread | None = None  # the endpoint's server thread while it listens
        self._loop: asyncio.AbstractEventLoop | None = None

    def observe(self, key, result) -> None:
        """Count one check result (an inconclusive one measured the director, not the server: left out)."""
        if not result.inconclusive:
            self.checks.labels(key[0]).observe(result.latency)

    def configure(self, spec) -> None:
        """Follow the file's ``metrics:`` section: start, move or stop the endpoint (call from the loop)."""
        from lvsmail.config.metrics import parse_listen

        self._loop = asyncio.get_running_loop()
        listen = spec.metrics.listen if getattr(spec, "metrics", None) is not None else None
        if listen == self.listen:
            return
        self.stop()
        if listen is None:
            return
        addr, port = parse_listen(listen)
        try:
            self._httpd, self.thread = serve(addr, port, self.registry)
        except OSError as exc:
            log.error("metrics: cannot listen on %s: %s", listen, exc)
            return
        self.listen = listen
        log.info("metrics: Prometheus endpoint on http://%s/metrics", listen)

    def stop(self) -> None:
        """Stop the endpoint if it runs."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self.thread.join(SCRAPE_TIMEOUT)
            self._httpd = self.thread = None
        self.listen = None

    def snapshot(self) -> dict:
        """The director's snapshot, taken on its loop (called from the HTTP thread)."""
        from lvsmail.console.snapshot import snapshot

        future = asyncio.run_coroutine_threadsafe(snapshot(self.view, events=0), self._loop)
        return future.result(SCRAPE_TIMEOUT)

    def outages(self):
        """The failovers this director recorded (for ``lvsmail availability``)."""
        from lvsmail.console.outages import read_outages

        return read_outages(self.view.state.outages).outages


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, bounded in number and time (see the module docstring).

    The threads are daemons so a stuck scrape never holds the director's exit.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # socketserver's 5 would make a burst of connections wait for SYN retries

    def __init__(self, *args, **kwargs) -> None:
        self._lock = threading.Lock()
        self._open: dict[socket.socket, tuple[str, threading.Timer]] = {}  # oldest first
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        """Admit the connection (per-source cap, then the oldest gives way), arm its deadline, serve it."""
        source = client_address[0]
        with self._lock:
            if sum(1 for peer, _ in self._open.values() if peer == source) >= MAX_SCRAPES_PER_SOURCE:
                log.warning("metrics: %s already holds %d connections; closing a new one", source,
                            MAX_SCRAPES_PER_SOURCE)
                self.shutdown_request(request)
                return
            if len(self._open) >= MAX_SCRAPES:
                oldest = next(iter(self._open))
                log.warning("metrics: %d scrapes in progress; the oldest, from %s, gives way", MAX_SCRAPES,
                            self._open[oldest][0])
                self._release(oldest)
                _cut(oldest)
            timer = threading.Timer(SCRAPE_DEADLINE, _cut, (request,))
            timer.daemon = True
            self._open[request] = (source, timer)
        request.settimeout(SCRAPE_DEADLINE)  # no single read waits past the deadline either
        timer.start()
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        """Serve, then give the slot back and disarm the deadline."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._release(request)

    def _release(self, request) -> None:
        entry = self._open.pop(request, None)
        if entry is not None:
            entry[1].cancel()

    def handle_error(self, request, client_address) -> None:
        """A connection cut at its deadline or by a peer is one log line, not a traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.warning("metrics: connection from %s: %s", client_address[0], exc)
        else:
            log.error("metrics: scrape from %s failed", client_address[0], exc_info=True)


def _cut(request: socket.socket) -> None:
    """End a connection's reads and writes now (its thread then finishes); idempotent."""
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its thread: nothing left to cut


class _QuietHandler(WSGIRequestHandler):
    """Serves scrapes without logging each one to stderr (a scrape every 15 s would fill the journal)."""

    def log_message(self, format, *args) -> None:  # noqa: A002 - the standard library's signature
        """Log nothing."""


def serve(addr: str, port: int, registry) -> tuple[_MetricsServer, threading.Thread]:
    """Serve ``registry`` on addr:port from a daemon thread; the server and its thread, to stop it.

    Built from prometheus_client's documented WSGI application rather than its
    ``start_http_server``: that returns nothing up to 0.16 (Debian 12's) and
    (server, thread) from 0.17, and the director needs the server to stop or move it.
    """
    from prometheus_client import make_wsgi_app

    class Server(_MetricsServer):
        address_family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET

    httpd = Server((addr, port), _QuietHandler)
    httpd.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=httpd.serve_forever, name=f"lvsmail-metrics {addr}:{port}", daemon=True)
    thread.start()
    return httpd, thread


class _Collector:
    """Builds the scrape-time families; a failed snapshot fails the scrape (Prometheus marks the target down)."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self):
        yield from families(self.exporter.snapshot(), self.exporter.outages())
