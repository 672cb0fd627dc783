"""How a profile is written as bytes, the same in every store."""

from __future__ import annotations

import msgspec

from intently.context.profile import Profile, SegmentChange

_to_msgpack = msgspec.msgpack.Encoder().encode
_to_json = msgspec.json.Encoder().encode
_from_msgpack = msgspec.msgpack.Decoder(Profile).decode
_from_json = msgspec.json.Decoder(Profile).decode
encode_change = msgspec.msgpack.Encoder().encode
decode_change = msgspec.msgpack.Decoder(SegmentChange).decode


def encode_profile(profile: Profile) -> bytes:
    """A profile's body: MessagePack, or JSON for one holding an integer beyond 64 bits
    (a trait can: free-form data keeps any JSON number, as the event log does), which
    MessagePack cannot hold. Without this, such a trait failed every later write of the
    store, and the erasure that forced one answered 500 (found by the API fuzzer)."""
    try:
        return _to_msgpack(profile)
    except OverflowError:
        return _to_json(profile)


def decode_profile(body: bytes) -> Profile:
    # A MessagePack map never starts with "{" (0x7b is a positive integer there).
    return _from_json(body) if body[:1] == b"{" else _from_msgpack(body)
