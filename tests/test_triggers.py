"""Triggered placements: entering a segment decides a placement for the person and POSTs
it, signed, to a real local receiver; against a real `intently serve` process."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from intently import Engine
from intently.act.decisions import DecisionLogReader
from intently.configfile import ConfigError
from support import SECRET_KEY, make_settings
from web_support import LiveServer, start_server

WEBHOOK_SECRET = "whsec_triggers"
OFFER = {
    "id": "cart-reminder",
    "kind": "banner",
    "title": "Your cart <misses> you",
    "fields": {"url": "https://shop.example/cart", "text": "10% off today", "cta": "Back"},
}


class Receiver:
    """A real HTTP server on 127.0.0.1 recording what it receives; answers `statuses`
    in turn, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payloads(self, trigger: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            found = [json.loads(body) for _, body in self.requests]
        return [p for p in found if trigger is None or p["trigger"] == trigger]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], Any], seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[LiveServer]:
    config = tmp_path_factory.mktemp("config")
    segments = config / "segments.yaml"
    segments.write_text("segments:\n  has-cart:\n    expression: session.cart.count > 0\n")
    triggers = config / "triggers.yaml"
    triggers.write_text(
        "triggers:\n  cart-reminder:\n    segment: has-cart\n    placement: home_hero\n"
        f"    url: {receiver.url}\n    description: Remind of the cart\n"
    )
    live = start_server(
        tmp_path_factory.mktemp("triggers") / "data",
        env={"INTENTLY_SEGMENTS_FILE": str(segments), "INTENTLY_TRIGGERS_FILE": str(triggers),
             "INTENTLY_WEBHOOK_SECRET": WEBHOOK_SECRET},
    )  # fmt: skip
    live.post("/v1/catalog/offers", {"offers": [OFFER]}, key=SECRET_KEY)
    yield live
    live.stop()


def event(name: str, user: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": user, "properties": properties}


def send(server: LiveServer, *events: dict[str, Any]) -> None:
    answer = server.post("/v1/events", {"batch": list(events)})
    assert answer["accepted"] == len(events), answer


def add(server: LiveServer, user: str, product: str = "p1") -> None:
    send(server, event("Product Added", user, product_id=product, price=20, quantity=1))


def of(receiver: Receiver, user: str) -> list[dict[str, Any]]:
    return [p for p in receiver.payloads() if p["user_id"] == user]


def read_log(server: LiveServer) -> tuple[dict[str, Any], dict[str, float]]:
    reader = DecisionLogReader(server.data_dir / "decisions.db")
    try:
        return {r.decision_id: r for r in reader.decisions()}, reader.rewards()
    finally:
        reader.close()


def test_entering_the_segment_sends_one_signed_logged_decision(
    server: LiveServer, receiver: Receiver
) -> None:
    add(server, "u-1")
    [payload] = wait_for(lambda: of(receiver, "u-1"))
    assert payload["type"] == "placement.triggered"
    assert (payload["trigger"], payload["segment"], payload["placement"]) == (
        "cart-reminder", "has-cart", "home_hero",
    )  # fmt: skip
    assert payload["profile_id"]
    assert payload["seq"] > 0
    assert payload["decided_at_ms"] >= payload["entered_at_ms"] > 0
    decision = payload["decision"]
    assert [item["id"] for item in decision["items"]] == ["cart-reminder"]
    assert f'data-intently-decision="{decision["decision_id"]}"' in payload["html"]
    assert "Your cart &lt;misses&gt; you" in payload["html"]
    # Signed as segment webhooks are: HMAC-SHA256 over "<t>.<body>".
    [(headers, body)] = [
        (h, b) for h, b in receiver.requests if json.loads(b)["id"] == payload["id"]
    ]
    assert headers["Intently-Delivery"] == payload["id"]
    stamp, mac = (part.split("=", 1)[1] for part in headers["Intently-Signature"].split(","))
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(mac, expected.hexdigest())
    # Logged like any decision, and credited when the person clicks later.
    decisions, _ = wait_for(
        lambda: decision["decision_id"] in read_log(server)[0] and read_log(server)
    )
    record = decisions[decision["decision_id"]]
    assert (record.placement, record.items, record.propensities) == (
        "home_hero", ["cart-reminder"], [1.0],
    )  # fmt: skip
    assert record.profile_id == payload["profile_id"]
    send(server, event("Promotion Clicked", "u-1", promotion_id="cart-reminder",
                       decision_id=decision["decision_id"]))  # fmt: skip
    _, rewards = wait_for(
        lambda: decision["decision_id"] in read_log(server)[1] and read_log(server)
    )
    assert rewards[decision["decision_id"]] == 1.0


def test_only_an_entry_fires_and_a_member_enters_again_only_after_leaving(
    server: LiveServer, receiver: Receiver
) -> None:
    add(server, "u-2")
    wait_for(lambda: of(receiver, "u-2"))
    add(server, "u-2", "p2")  # still a member: no new entry
    send(server, event("Product Removed", "u-2", product_id="p1", quantity=1))
    send(server, event("Product Removed", "u-2", product_id="p2", quantity=1))  # leaves
    add(server, "u-2", "p3")  # enters again
    first, second = wait_for(lambda: len(of(receiver, "u-2")) >= 2 and of(receiver, "u-2"))
    assert first["id"] != second["id"]
    assert second["seq"] > first["seq"]
    # (a barrier: a later person's delivery arrives after any stray one of u-2's)
    add(server, "u-2b")
    wait_for(lambda: of(receiver, "u-2b"))
    assert len(of(receiver, "u-2")) == 2


def test_a_person_who_refused_marketing_or_personalization_is_not_sent(
    server: LiveServer, receiver: Receiver
) -> None:
    for user, refused in (("u-3", "marketing"), ("u-4", "personalization")):
        send(server, event("Product Viewed", user, product_id="p1"))
        consent = urlopen_put(server, f"/v1/profiles/{user}/consent", {refused: False})
        assert consent[refused] is False, consent
        add(server, user)
    add(server, "u-5")  # a barrier, as above
    wait_for(lambda: of(receiver, "u-5"))
    assert of(receiver, "u-3") == []
    assert of(receiver, "u-4") == []


def test_a_failing_sender_gets_the_same_delivery_again(
    server: LiveServer, receiver: Receiver
) -> None:
    with receiver.lock:
        receiver.statuses = [503]
    add(server, "u-6")
    first, again = wait_for(lambda: len(of(receiver, "u-6")) >= 2 and of(receiver, "u-6"))
    assert first == again  # the same delivery (id, decision), retried after backoff


def urlopen_put(server: LiveServer, path: str, body: Any) -> Any:
    import urllib.request

    request = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), method="PUT",
        headers={"Authorization": f"Bearer {SECRET_KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_triggers_file_is_checked_at_start(tmp_path: Path) -> None:
    segments = tmp_path / "segments.yaml"
    segments.write_text("segments:\n  s:\n    expression: session.cart.count > 0\n")
    cases = {
        "segment: nope\n    placement: home_hero\n    url: http://x/": "no segment 'nope'",
        "segment: s\n    placement: nope\n    url: http://x/": "no placement 'nope'",
        "segment: s\n    placement: home_hero\n    url: ftp://x/": "url",
        "segment: s\n    placement: home_hero\n    url: http://x/\n    purpose: fun": "purpose",
    }
    for number, (body, message) in enumerate(cases.items()):
        triggers = tmp_path / f"t{number}.yaml"
        triggers.write_text(f"triggers:\n  t:\n    {body}\n")
        settings = make_settings(
            tmp_path / f"d{number}", segments_file=segments, triggers_file=triggers,
            webhook_secret="s",
        )  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            Engine(settings).close()
    triggers = tmp_path / "ok.yaml"
    triggers.write_text(
        "triggers:\n  t:\n    segment: s\n    placement: home_hero\n    url: http://x/\n"
    )
    unsigned = make_settings(tmp_path / "d", segments_file=segments, triggers_file=triggers)
    with pytest.raises(ConfigError, match="INTENTLY_WEBHOOK_SECRET"):
        Engine(unsigned).close()
