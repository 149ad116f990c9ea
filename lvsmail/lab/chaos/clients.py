"""Mail clients for the lab: MTA-like SMTP senders with retries, IMAP readers, held sessions.

A sender behaves like a real MTA delivering to the cluster's MX (RFC 5321):

* a message is **accepted** only when the server answered 250 to the end of
  DATA (§4.1.1.4, §6.1: from then on the server is responsible for it);
* any failure before that — refused connection, timeout, 4xx/5xx, a dropped
  connection — leaves the message queued here and it is **retried later**
  with the same Message-ID, as Postfix would (§4.5.4.1);
* when the connection dies after the final dot was sent but before the reply,
  the server may have accepted the message anyway; the retry may then deliver
  a second copy. This is SMTP's at-least-once delivery (§6.1, RFC 1047), so
  each such attempt is recorded as *ambiguous*, which later explains a
  duplicate.

Every session attempt (SMTP or IMAP) is an event with its start, end, outcome
and the real server that greeted it; the report derives sessions per second,
outages and recovery times from them. Everything runs in one asyncio loop in a
thread that entered the client's namespace (sockets are created there).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

from lvsmail.lab.mailstack import DOMAIN, USERS
from lvsmail.net import netns

#: Seconds an MTA waits before retrying a message (Postfix's minimal_backoff_time is 300 s; a lab is in a hurry).
RETRY_AFTER = 3.0
SMTP_TIMEOUT = 20.0
IMAP_TIMEOUT = 20.0


@dataclass
class Message:
    """One message in the senders' queue."""

    mid: str  # Message-ID, without the angle brackets
    rcpt: str
    source: str  # client address the MTA sends from (one per simulated MTA)
    created: float
    attempts: int = 0
    ambiguous: int = 0  # attempts where the final dot went out and no reply came back
    accepted_at: float | None = None
    accepted_by: str | None = None
    next_try: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SessionEvent:
    """One session attempt: protocol, when, outcome, where it landed, and why it failed."""

    proto: str  # smtp | imap
    start: float  # time.time()
    end: float
    ok: bool
    server: str | None
    error: str = ""


def greeting_name(text: str) -> str | None:
    """The real server named last in the greeting (``clustermail.example.org ESMTP rs2`` -> rs2)."""
    words = text.split()
    return words[-1] if words else None


def message_text(m: Message) -> str:
    """The message (RFC 5322 headers; the Message-ID is what the accounting counts)."""
    return (f"From: chaos@client.example.net\r\nTo: {m.rcpt}\r\nSubject: lab message {m.mid}\r\n"
            f"Message-ID: <{m.mid}>\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            "\r\nSent through the VIP by the lab's clients.\r\n")


async def send_one(vip: str, m: Message, timeout: float = SMTP_TIMEOUT) -> SessionEvent:
    """One SMTP transaction for ``m`` through the VIP; updates ``m`` (accepted or ambiguous)."""
    import aiosmtplib

    start = time.time()
    m.attempts += 1
    server = None
    smtp = aiosmtplib.SMTP(hostname=vip, port=25, timeout=timeout, source_address=(m.source, 0),
                           local_hostname="mta.client.example.net", start_tls=False, use_tls=False)
    dot_sent = False
    try:
        resp = await smtp.connect()
        server = greeting_name(resp.message)
        await smtp.ehlo()
        await smtp.mail("chaos@client.example.net")
        await smtp.rcpt(m.rcpt)
        dot_sent = True  # aiosmtplib's data() sends the text and the final dot, then reads the reply
        reply = await smtp.data(message_text(m))
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        m.accepted_at, m.accepted_by = time.time(), server
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            pass  # accepted already: QUIT's fate does not matter (RFC 5321 §4.1.1.10)
        return SessionEvent("smtp", start, time.time(), True, server)
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        code = getattr(exc, "code", None)
        if dot_sent and isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                                         OSError, asyncio.TimeoutError)) and code is None:
            m.ambiguous += 1
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        m.errors.append(reason)
        smtp.close()
        return SessionEvent("smtp", start, time.time(), False, server, reason)


def imap_fetch_ids(vip: str, user: str, password: str, timeout: float = IMAP_TIMEOUT) -> set[str]:
    """Log in through the VIP with imapclient (RFC 9051 LOGIN, SELECT, FETCH) and return the INBOX's Message-IDs.

    Run it in a thread inside the client's namespace (imapclient makes its own socket).
    """

    from imapclient import IMAPClient

    client = IMAPClient(vip, port=143, ssl=False, timeout=timeout)
    try:
        client.login(user, password)
        client.select_folder("INBOX", readonly=True)
        ids: set[str] = set()
        uids = client.search("ALL")
        if uids:
            for data in client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).values():
                raw = data.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]", b"").decode(errors="replace")
                for line in raw.splitlines():
                    if line.lower().startswith("message-id:"):
                        ids.add(line.split(":", 1)[1].strip().strip("<>"))
        client.logout()
        return ids
    except OSError:
        try:
            client.shutdown()
        except OSError:
            pass
        raise


class MtaClients:
    """Senders and readers running in the client namespace until stopped; collects events and messages."""

    def __init__(self, ns: str, vip: str, sources: list[str], seed: int = 0, senders: int = 6, readers: int = 2,
                 rate: float = 1.0, max_messages: int = 5000) -> None:
        self.ns, self.vip, self.sources = ns, vip, sources
        self.rng = random.Random(seed)
        self.senders, self.readers, self.rate, self.max_messages = senders, readers, rate, max_messages
        self.messages: list[Message] = []
        self.events: list[SessionEvent] = []
        self.lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self._producing = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._thread: threading.Thread | None = None
        self._seq = itertools.count(1)
        self.started = 0.0
        self.error: BaseException | None = None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> MtaClients:
        """Start the loop in a thread inside the client namespace."""
        ready = threading.Event()

        def body() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as exc:  # reported by stop()
                self.error = exc
                ready.set()

        self.started = time.time()
        self._thread = netns.start_in_netns(self.ns, body, thread_name="lab-clients")
        ready.wait(60)
        return self

    def stop_producing(self) -> None:
        """No new messages; queued ones are still retried until :meth:`drain` or :meth:`stop`."""
        self._producing = False

    def drain(self, timeout: float) -> int:
        """Wait until every message is accepted (bounded); returns how many are still queued."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pending():
                return 0
            time.sleep(0.5)
        return len(self.pending())

    def pending(self) -> list[Message]:
        """Messages not yet accepted."""
        with self.lock:
            return [m for m in self.messages if m.accepted_at is None]

    def stop(self) -> None:
        """Stop every task and join the thread; re-raise what killed the loop, if anything did.

        Safe to call again (the run's clean-up calls it after the accounting did)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout=60)
        if self.error is not None:
            raise RuntimeError(f"the lab clients failed: {self.error!r}") from self.error

    # -- the loop -------------------------------------------------------------------------------

    def send_direct(self, host: str, count: int, timeout: float = 120) -> list[Message]:
        """``count`` new messages sent straight to ``host`` (a real server's own address, not the VIP),
        one attempt each; those it does not accept join the senders' queue and go through the VIP.

        The queue-full fault uses it to put mail in a real server's queue while its deliveries are
        deferred: mail a server accepted and holds must still arrive exactly once.
        """
        future = asyncio.run_coroutine_threadsafe(self._send_direct(host, count), self._loop)
        return future.result(timeout)

    async def _send_direct(self, host: str, count: int) -> list[Message]:
        batch = [self._new_message() for _ in range(count)]
        await asyncio.gather(*(send_one(host, m) for m in batch))  # concurrently, as several MTAs would
        for m in batch:
            if m.accepted_at is None:
                m.next_try = time.time() + RETRY_AFTER
                self._queue.put_nowait(m)
        return batch

    def _new_message(self) -> Message:
        """The next message, from one of the MTAs (client addresses) to one of the mailboxes."""
        users = list(USERS)
        n = next(self._seq)
        m = Message(mid=f"lab-{n}-{self.rng.getrandbits(32):08x}@client.example.net",
                    rcpt=f"{users[n % len(users)]}@{DOMAIN}", source=self.sources[n % len(self.sources)],
                    created=time.time())
        with self.lock:
            self.messages.append(m)
        return m

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queue = queue
        tasks = [asyncio.create_task(self._produce(queue))]
        tasks += [asyncio.create_task(self._sender(queue)) for _ in range(self.senders)]
        tasks += [asyncio.create_task(self._reader(i)) for i in range(self.readers)]
        ready.set()
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _produce(self, queue: asyncio.Queue) -> None:
        """New messages at ``rate`` per second, each from one of the MTAs (client addresses) to a mailbox."""
        while True:
            await asyncio.sleep(1.0 / self.rate)
            if not self._producing or len(self.messages) >= self.max_messages:
                continue
            queue.put_nowait(self._new_message())

    async def _sender(self, queue: asyncio.Queue) -> None:
        """Take a message, try it; on failure put it back to be retried after RETRY_AFTER."""
        while True:
            m = await queue.get()
            wait = m.next_try - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            event = await send_one(self.vip, m)
            with self.lock:
                self.events.append(event)
            if m.accepted_at is None:
                m.next_try = time.time() + RETRY_AFTER
                queue.put_nowait(m)

    async def _reader(self, index: int) -> None:
        """Log in to mailboxes through the VIP in turn (an IMAP session each), every couple of seconds."""
        users = list(USERS)
        for n in itertools.count(index):
            user = users[n % len(users)]
            start = time.time()
            try:
                await asyncio.wait_for(asyncio.to_thread(imap_fetch_ids, self.vip, f"{user}@{DOMAIN}", USERS[user]),
                                       IMAP_TIMEOUT + 5)
                event = SessionEvent("imap", start, time.time(), True, None)
            except Exception as exc:  # every failure is a failed session, recorded with its reason
                event = SessionEvent("imap", start, time.time(), False, None,
                                     f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            with self.lock:
                self.events.append(event)
            await asyncio.sleep(2.0)


class HeldSessions:
    """SMTP sessions kept open through the VIP (a NOOP every few seconds): do they survive a takeover?"""

    def __init__(self, ns: str, vip: str, sources: list[str], count: int = 4, every: float = 2.0) -> None:
        self.ns, self.vip, self.sources, self.count, self.every = ns, vip, sources, count, every
        #: session id -> (opened, closed or None, server, reason)
        self.sessions: dict[int, list] = {}
        self.lock = threading.Lock()
        #: why sessions could not be opened or broke: reason -> count (shown in the report)
        self.failures: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HeldSessions:
        """Open the sessions in a thread in the client namespace; each is reopened when it breaks."""
        self._thread = netns.start_in_netns(self.ns, self._run, thread_name="lab-held")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # recorded for the report, then the thread ends with it
            with self.lock:
                self.failures[f"crashed: {type(exc).__name__}: {exc}"[:200]] += 1
            raise

    def stop(self) -> None:
        """Close them (QUIT) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def open_at(self, t: float) -> list[int]:
        """Sessions established at time ``t``."""
        with self.lock:
            return [sid for sid, (o, c, _s, _r) in self.sessions.items() if o <= t and (c is None or c > t)]

    def survived(self, sids: list[int], until: float) -> list[int]:
        """Of ``sids``, those still working at ``until``."""
        with self.lock:
            return [sid for sid in sids if self.sessions[sid][1] is None or self.sessions[sid][1] > until]

    async def _main(self) -> None:
        ids = itertools.count(1)
        await asyncio.gather(*(self._one(i, ids) for i in range(self.count)))

    async def _one(self, index: int, ids) -> None:
        source = self.sources[(index * 5 + 3) % len(self.sources)]
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.vip, 25, local_addr=(source, 0)), SMTP_TIMEOUT)
            except (TimeoutError, OSError) as exc:
                with self.lock:
                    self.failures[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            sid = next(ids)
            try:
                greeting = await asyncio.wait_for(reader.readline(), SMTP_TIMEOUT)
                if not greeting.startswith(b"220"):
                    raise ConnectionError(f"greeting {greeting!r}")
                with self.lock:
                    self.sessions[sid] = [time.time(), None, greeting_name(greeting.decode(errors="replace")), ""]
                writer.write(b"EHLO held.client.example.net\r\n")
                while True:
                    line = await asyncio.wait_for(reader.readline(), SMTP_TIMEOUT)
                    if not line.startswith(b"250"):
                        raise ConnectionError(f"EHLO answered {line!r}")
                    if line[3:4] == b" ":
                        break
                while not self._stop.is_set():
                    await asyncio.sleep(self.every)
                    # NOOP keeps the session busy below Postfix's 300 s smtpd_timeout (RFC 5321 §4.1.1.9).
                    writer.write(b"NOOP\r\n")
                    line = await asyncio.wait_for(reader.readline(), SMTP_TIMEOUT)
                    if not line.startswith(b"250"):
                        raise ConnectionError(f"NOOP answered {line!r}")
                writer.write(b"QUIT\r\n")
                with self.lock:
                    if sid in self.sessions:
                        self.sessions[sid][1] = None
            except (TimeoutError, OSError, ConnectionError) as exc:
                with self.lock:
                    self.failures[f"session: {type(exc).__name__}"] += 1
                    if sid in self.sessions:
                        self.sessions[sid][1] = time.time()
                        self.sessions[sid][3] = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                writer.close()
