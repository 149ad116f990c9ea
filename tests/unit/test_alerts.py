"""Alert policy: who is told what and when (sending replaced by recorders)."""

import asyncio

from lvsmail.health.alerts import Alerter
from lvsmail.spec import AlertsSpec

KEY = ("smtp", "198.51.100.20", 25)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def recorder():
    mails, posts = [], []

    async def mailer(msg, spec):
        mails.append(msg)

    async def poster(url, body):
        posts.append((url, body))

    return mails, posts, mailer, poster


def test_transition_mails_and_posts_with_the_reason():
    mails, posts, mailer, poster = recorder()
    spec = AlertsSpec(email=("postmaster@example.org",), webhook="https://hooks.example.org/x")

    async def go():
        a = Alerter(spec, "clustermail", mailer=mailer, poster=poster)
        a.transition(KEY, False, "smtp 198.51.100.20:25: greeting 421 4.3.2 busy")
        await a.drain()

    asyncio.run(go())
    assert mails[0]["Subject"] == "[lvsmail clustermail] smtp 198.51.100.20:25 down"
    assert "greeting 421 4.3.2 busy" in mails[0].get_content()
    assert posts[0][0] == "https://hooks.example.org/x" and b'"state": "down"' in posts[0][1]


def test_reminders_follow_repeat_and_stop_after_recovery():
    mails, _, mailer, poster = recorder()
    clock = Clock()

    async def go():
        a = Alerter(AlertsSpec(email=("postmaster@example.org",), repeat=600), "c", mailer=mailer, poster=poster,
                    clock=clock)
        a.transition(KEY, False, "refused")
        clock.now += 599
        a.remind({KEY: "refused"})
        clock.now += 1
        a.remind({KEY: "refused"})
        a.transition(KEY, True, "ok")
        clock.now += 10_000
        a.remind({})
        await a.drain()

    asyncio.run(go())
    assert [m["Subject"].split()[-1] for m in mails] == ["down", "down", "up"]
    assert mails[1]["Subject"].endswith("still down")


def test_a_failing_relay_is_logged_and_counted_not_raised(caplog):
    async def broken(msg, spec):
        raise ConnectionRefusedError("connect to 127.0.0.1:2525 refused")

    async def go():
        a = Alerter(AlertsSpec(email=("postmaster@example.org",)), "c", mailer=broken)
        a.transition(KEY, False, "refused")
        await a.drain()
        return a

    a = asyncio.run(go())
    assert (a.sent, a.failed) == (0, 1)
    assert "mail to postmaster@example.org via localhost:25 failed" in caplog.text
