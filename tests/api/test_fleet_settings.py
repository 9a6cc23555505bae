"""Issue 18's settings: APP_STORAGE, APP_REDIS_URL and APP_TRUSTED_PROXIES are checked at
start-up with a reason, and the trusted proxies reach uvicorn (the only source of
X-Forwarded-For/-Proto)."""

from __future__ import annotations

import pytest

from app.__main__ import uvicorn_options
from app.config import ConfigError, Settings


def test_defaults_change_nothing_for_one_box() -> None:
    settings = Settings.from_env({})
    assert settings.storage == "filesystem" and settings.redis_url is None
    options = uvicorn_options(settings)
    # uvicorn's own default before this setting existed: a proxy on this host
    assert options["proxy_headers"] is True and options["forwarded_allow_ips"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"APP_STORAGE": "s3"}, "APP_STORAGE must be one of filesystem, database"),
        ({"APP_REDIS_URL": "localhost:6379"}, "APP_REDIS_URL must be redis://"),
        ({"APP_TRUSTED_PROXIES": "10.0.0.0/8, nginx.local"}, "got 'nginx.local'"),
    ],
)
def test_bad_values_are_refused_with_the_reason(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(env)


def test_trusted_proxies_reach_uvicorn() -> None:
    settings = Settings.from_env(
        {"APP_TRUSTED_PROXIES": " 10.1.0.0/16 ,127.0.0.1", "APP_STORAGE": "Database"}
    )
    assert settings.storage == "database"
    options = uvicorn_options(settings)
    assert options["forwarded_allow_ips"] == "10.1.0.0/16,127.0.0.1"
    nobody = uvicorn_options(Settings.from_env({"APP_TRUSTED_PROXIES": "none"}))
    assert nobody["proxy_headers"] is False
