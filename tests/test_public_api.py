"""The public API is explicit and complete (`__all__`), and settings and keys fail fast."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import intently
from intently.config import load_settings
from intently.keys import Role, load_or_create_keys


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(intently) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(intently, name)).__name__ == "module"}
    assert set(intently.__all__) - {"__version__"} == public - modules
    for name in intently.__all__:
        assert getattr(intently, name) is not None


def test_settings_from_environment_then_overrides() -> None:
    settings = load_settings(
        {"port": 9000},
        environ={"INTENTLY_PORT": "8100", "INTENTLY_CORS_ORIGINS": "https://a.example, https://b.example",
                 "INTENTLY_IP_MODE": "drop", "INTENTLY_DATA_DIR": "/tmp/x"},
    )  # fmt: skip
    assert settings.port == 9000
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.ip_mode == "drop"
    assert settings.data_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"INTENTLY_PORT": "eighty"}, "invalid setting"),
        ({"INTENTLY_PORT": "70000"}, "port must be"),
        ({"INTENTLY_IP_MODE": "hash"}, r"Invalid enum value 'hash' - at `\$.ip_mode`"),
        ({"INTENTLY_SYNCHRONOUS": "OFF"}, r"Invalid enum value 'OFF' - at `\$.synchronous`"),
    ],
)
def test_bad_settings_fail_with_a_named_message(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(environ=environ)


def test_keys_created_once_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create_keys(tmp_path)
    assert first.created
    assert first.keys.write_key.startswith("wk_")
    assert first.keys.secret_key.startswith("sk_")
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    again = load_or_create_keys(tmp_path)
    assert not again.created
    assert again.keys == first.keys
    overridden = load_or_create_keys(tmp_path, write_key="wk_env")
    assert overridden.keys.write_key == "wk_env"
    assert overridden.keys.secret_key == first.keys.secret_key


def test_roles() -> None:
    keys = load_or_create_keys(Path("/nonexistent"), write_key="wk_a", secret_key="sk_b").keys
    assert keys.role_of("wk_a") is Role.WRITE
    assert keys.role_of("sk_b") is Role.ADMIN
    assert keys.role_of("wk_") is None
    assert keys.role_of(None) is None
    with pytest.raises(ValueError, match="must differ"):
        load_or_create_keys(Path("/nonexistent"), write_key="same", secret_key="same")


def test_an_engine_that_fails_to_open_releases_the_data_dir(tmp_path: Path) -> None:
    from intently import Engine
    from intently.events.geo import GeoDatabaseMissing
    from support import make_settings

    with pytest.raises(GeoDatabaseMissing):
        Engine(make_settings(tmp_path, geoip_db=tmp_path / "missing.mmdb"))
    Engine(make_settings(tmp_path)).close()  # not DataDirLocked
