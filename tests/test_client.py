"""`intently.Client` and `AsyncClient` against a real `intently serve` process, and against
servers that stall, fail or answer junk: decide never raises for the engine's trouble."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from intently import AsyncClient, Client, IntentlyError
from intently.act.wire import PlacementAsk
from support import SECRET_KEY, WRITE_KEY, free_port
from web_support import LiveServer, start_server

FALLBACK = {"home_hero": "<p>Welcome</p>", "pdp_recs": "<p>Bestsellers</p>"}
# Generous: the budget is 0.2 s per phase; a loaded machine may add a lot.
SLACK_SECONDS = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("client") / "data")
    offers = [{"id": "sale", "kind": "banner", "title": "Sale <now>",
               "fields": {"url": "https://shop.example/sale", "text": "Half off"}}]  # fmt: skip
    live.post("/v1/catalog/offers", {"offers": offers}, key=SECRET_KEY)
    items = [{"id": f"p{i}", "title": f"Shoe {i}", "category": ["Shoes", "running"],
              "price": 50 + i, "stock": 5} for i in range(12)]  # fmt: skip
    live.post("/v1/catalog/items", {"items": items}, key=SECRET_KEY)
    yield live
    live.stop()


class Scripted:
    """A raw TCP server: accepts, reads a request, then answers `reply` bytes, or with
    `reply=None` never answers (holds the connection open)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with_body = b""
        try:
            while b"\r\n\r\n" not in with_body:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                with_body += chunk
            self.requests += 1
            if self.reply is not None:
                connection.sendall(self.reply)
                connection.close()
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


@pytest.fixture
def stalled() -> Iterator[Scripted]:
    found = Scripted(None)
    yield found
    found.close()


# -- a real engine -----------------------------------------------------------------------------


def test_events_then_decisions_that_see_them(server: LiveServer) -> None:
    with Client(server.url, WRITE_KEY, timeout=5) as engine:
        engine.identify("c-1", {"plan": "gold"}, anonymous_id="anon-c1")
        engine.page("Home", {"url": "https://shop.example/"}, anonymous_id="anon-c1")
        engine.track("Product Viewed", {"product_id": "p3", "price": 53}, anonymous_id="anon-c1")
        assert engine.pending == 3  # batched: nothing sent yet
        found = engine.decide(
            ["home_hero", PlacementAsk("pdp_recs", count=4)], user_id="c-1",
            context={"product_id": "p3"}, fallback=FALLBACK, templates=True,
        )  # fmt: skip
        # The queued events went first, in the same request (POST /v1/context).
        assert (engine.pending, engine.sent) == (0, 3)
        assert found.degraded is None
        hero, recs = found["home_hero"], found["pdp_recs"]
        assert hero.decided
        assert hero.decision_id
        assert hero.degraded is None
        assert [item.id for item in hero.items] == ["sale"]
        assert hero.default == "<p>Welcome</p>"  # (kept, for when nothing is decided)
        markup = hero.html()
        assert markup is not None
        assert "Sale &lt;now&gt;" in markup
        assert f'data-intently-decision="{hero.decision_id}"' in markup
        assert 1 <= len(recs.items) <= 4
        assert "p3" not in [i.id for i in recs.items]
        assert [d.placement for d in found] == ["home_hero", "pdp_recs"]
    profile = server.get("/v1/profiles/c-1")
    assert profile["traits"]["plan"] == "gold"


def test_flush_and_close_send_what_is_queued(server: LiveServer) -> None:
    engine = Client(server.url, WRITE_KEY, batch_size=2)
    engine.track("Product Viewed", {"product_id": "p1"}, anonymous_id="anon-f")
    assert engine.pending == 1
    engine.track("Product Viewed", {"product_id": "p2"}, anonymous_id="anon-f")
    assert (engine.pending, engine.sent) == (0, 2)  # a full batch is sent at once
    engine.track("Product Viewed", {"product_id": "p4"}, anonymous_id="anon-f")
    engine.close()
    assert (engine.pending, engine.sent) == (0, 3)
    assert server.get("/v1/profiles/anon-f")["session"]["events"] == 3


def test_the_callers_mistakes_raise_with_the_problem(server: LiveServer) -> None:
    with Client(server.url, WRITE_KEY, timeout=5) as engine:
        with pytest.raises(IntentlyError) as raised:
            engine.decide(["no_such_placement"], anonymous_id="a", fallback=FALLBACK)
        assert raised.value.status == 404
        assert raised.value.pointer == "/placements/0/id"
        assert "no_such_placement" in raised.value.detail
        with pytest.raises(IntentlyError) as raised:
            engine.decide(["home_hero"], anonymous_id="a", explain=True)  # needs the secret key
        assert raised.value.status == 403
        with pytest.raises(IntentlyError, match="HTTP 404"):
            engine.render("no_such_placement", user_id="u")
        with pytest.raises(ValueError, match="anonymous_id or user_id"):
            engine.decide(["home_hero"])
        with pytest.raises(ValueError, match="invalid track event"):
            engine.track("", anonymous_id="a")
        with pytest.raises(ValueError, match="invalid decide request"):
            engine.decide([PlacementAsk("home_hero", count=0)], anonymous_id="a")
    with Client(server.url, "wk_wrong", timeout=5) as wrong:
        with pytest.raises(IntentlyError) as raised:
            wrong.decide(["home_hero"], anonymous_id="a")
        assert raised.value.status == 401
        assert raised.value.problem["type"] == "urn:intently:problem:unauthorized"
        wrong.track("Product Viewed", {"product_id": "p1"}, anonymous_id="a")
        with pytest.raises(IntentlyError):
            wrong.flush()


def test_render_through_the_engine(server: LiveServer) -> None:
    with Client(server.url, WRITE_KEY, timeout=5) as engine:
        rendered = engine.render("home_hero", user_id="c-2", fallback="<p>Hi</p>")
    assert rendered.degraded is None
    assert rendered.decision_id
    assert f'data-intently-decision="{rendered.decision_id}"' in str(rendered)
    assert "Half off" in rendered.html


def test_the_async_client_does_the_same(server: LiveServer) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, WRITE_KEY, timeout=5) as engine:
            await engine.track("Product Viewed", {"product_id": "p5"}, anonymous_id="anon-as")
            found = await engine.decide(["home_hero"], anonymous_id="anon-as", fallback=FALLBACK)
            assert found["home_hero"].decided
            assert engine.pending == 0
            rendered = await engine.render("home_hero", anonymous_id="anon-as")
            assert "data-intently-decision" in rendered.html
            with pytest.raises(IntentlyError):
                await engine.decide(["nope"], anonymous_id="anon-as")

    asyncio.run(run())


# -- an engine in trouble ----------------------------------------------------------------------


def assert_fallback(found: object, reason: str) -> None:
    from intently.client import Decisions

    assert isinstance(found, Decisions)
    assert found.degraded is not None
    assert reason in found.degraded, found.degraded
    for decision in found:
        assert not decision.decided
        assert decision.decision_id is None
        assert decision.default == FALLBACK[decision.placement]
        assert decision.degraded == found.degraded


def test_a_stalled_engine_answers_the_fallback_within_the_timeout(stalled: Scripted) -> None:
    with Client(stalled.url, WRITE_KEY, timeout=0.2, event_timeout=0.2) as engine:
        engine.track("Product Viewed", {"product_id": "p1"}, anonymous_id="a")
        started = time.monotonic()
        found = engine.decide(["home_hero", "pdp_recs"], anonymous_id="a", fallback=FALLBACK)
        took = time.monotonic() - started
        assert_fallback(found, "timed out")
        assert took < 0.2 + SLACK_SECONDS
        assert engine.pending == 1  # the event it carried is kept for the next send
        rendered = engine.render("home_hero", anonymous_id="a", fallback="<p>Default</p>")
        assert rendered.html == "<p>Default</p>"
        assert "timed out" in (rendered.degraded or "")
        assert engine.flush() is False
        assert engine.pending == 1
    assert stalled.requests >= 3


def test_after_a_failed_send_track_does_not_wait_on_the_engine_again(stalled: Scripted) -> None:
    """A stalled engine costs one `track` its event timeout, not every `track` after it:
    the next automatic sends wait for the backoff (flush still tries when asked)."""
    with Client(stalled.url, WRITE_KEY, timeout=0.2, event_timeout=0.2, batch_size=1) as engine:
        engine.track("Product Viewed", {"product_id": "p1"}, anonymous_id="a")
        assert stalled.requests == 1
        for n in range(5):
            engine.track("Product Viewed", {"product_id": f"p{n}"}, anonymous_id="a")
        assert stalled.requests == 1  # queued, not sent
        assert engine.pending == 6
        assert engine.flush() is False
        assert stalled.requests == 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (http("500 Internal Server Error", b'{"oops": true}'), "HTTP 500"),
        (http("503 Service Unavailable", b""), "HTTP 503"),
        (http("429 Too Many Requests", b""), "HTTP 429"),
        (http("200 OK", b"<html>a proxy page</html>", "text/html"), "malformed answer"),
        (http("200 OK", b'{"decisions": [{"placement": 3}]}'), "malformed answer"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "RemoteProtocolError"),
    ],
)
def test_failing_or_junk_answers_give_the_fallback(reply: bytes, reason: str) -> None:
    scripted = Scripted(reply)
    try:
        with Client(scripted.url, WRITE_KEY, timeout=1) as engine:
            found = engine.decide(["home_hero", "pdp_recs"], user_id="u", fallback=FALLBACK)
            assert_fallback(found, reason)
            rendered = engine.render("home_hero", user_id="u", fallback="<p>Default</p>")
            assert rendered.html == "<p>Default</p>"
            assert rendered.degraded
    finally:
        scripted.close()


def test_nobody_listening_gives_the_fallback() -> None:
    port = free_port()  # (closed again: connections are refused)
    with Client(f"http://127.0.0.1:{port}", WRITE_KEY, timeout=0.2, retries=2) as engine:
        found = engine.decide(["home_hero", "pdp_recs"], anonymous_id="a", fallback=FALLBACK)
    assert_fallback(found, "ConnectError")


def test_the_async_client_falls_back_too(stalled: Scripted) -> None:
    async def run() -> None:
        async with AsyncClient(stalled.url, WRITE_KEY, timeout=0.2, event_timeout=0.2) as engine:
            started = time.monotonic()
            found = await engine.decide(["home_hero", "pdp_recs"], user_id="u", fallback=FALLBACK)
            assert time.monotonic() - started < 0.2 + SLACK_SECONDS
            assert_fallback(found, "timed out")

    asyncio.run(run())
