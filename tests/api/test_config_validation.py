"""Bad ``APP_*`` values refuse start-up with one line naming the variable and the value."""

from __future__ import annotations

import pytest

from app.__main__ import main, uvicorn_options
from app.config import ConfigError, Settings

BAD_VALUES = [
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "73637"),  # once listened on 73637 % 65536 = 8101
    ("PORT", "http"),
    ("WORKERS", "0"),
    ("WORKERS", "two"),
    ("MAX_UPLOAD_MB", "0"),
    ("MAX_UPLOAD_MB", "-1"),
    ("MAX_UPLOAD_MB", "1.5"),
    ("MAX_PIXELS", "0"),
    ("MAX_PIXELS", "4e7"),
    ("BATCH_MAX", "0"),
    ("BATCH_MAX", "-8"),
    ("QUEUE_MAX", "0"),
    ("QUEUE_MAX", "many"),
    ("UPLOADS_MAX", "0"),
    ("UPLOADS_MAX", "-4"),
    ("UPLOADS_MAX", "16.5"),
    ("MICROBATCH_MAX", "0"),
    ("MICROBATCH_MAX", "-1"),
    ("SESSION_IDLE_MINUTES", "0"),
    ("SESSION_IDLE_MINUTES", "-10"),
    ("ORT_THREADS", "0"),
    ("ORT_THREADS", "auto"),
    ("WORKER_NICE", "-1"),
    ("HEALTH_PORT", "65536"),
    ("HEALTH_PORT", "http"),
    ("WORKER_NICE", "20"),
    ("MICROBATCH_WAIT_MS", "-1"),
    ("MICROBATCH_WAIT_MS", "1000.5"),
    ("MICROBATCH_WAIT_MS", "nan"),
    ("MICROBATCH_WAIT_MS", "inf"),
    ("MICROBATCH_WAIT_MS", "2ms"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "NOTSET"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_settings_from_env_refuses_a_bad_value_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({f"APP_{name}": value})
    message = str(refused.value)
    assert f"APP_{name}" in message and repr(value) in message


def test_settings_from_env_accepts_values_at_the_bounds() -> None:
    settings = Settings.from_env(
        {
            "APP_PORT": "65535",
            "APP_WORKERS": "1",
            "APP_MAX_UPLOAD_MB": "1",
            "APP_MICROBATCH_WAIT_MS": "1000",
            "APP_ORT_THREADS": "1",
            "APP_LOG_LEVEL": "debug",
            "APP_UPLOADS_MAX": "1",
            "APP_WORKER_NICE": "19",
        }
    )
    assert settings.uploads_max == 1
    assert settings.worker_nice == 19
    assert (settings.port, settings.workers, settings.ort_threads) == (65535, 1, 1)
    assert settings.max_upload_bytes == 1024 * 1024
    assert settings.microbatch_wait_ms == 1000.0
    assert settings.log_level == "DEBUG"
    assert Settings.from_env({"APP_PORT": "1", "APP_MICROBATCH_WAIT_MS": "0"}).port == 1
    # the largest micro-batch: measured at start-up unless set (0 stands for auto inside)
    assert Settings.from_env({}).microbatch_max == 0
    assert Settings.from_env({"APP_MICROBATCH_MAX": "Auto"}).microbatch_max == 0
    assert Settings.from_env({"APP_MICROBATCH_MAX": "3"}).microbatch_max == 3


@pytest.mark.parametrize(
    ("name", "value"), [("MICROBATCH_WAIT_MS", "abc"), ("LOG_LEVEL", "verbose")]
)
def test_main_reports_a_bad_setting_in_one_line(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"APP_{name}", value)
    monkeypatch.setattr("app.__main__.serve", lambda settings: 0)  # never bind a port here
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: APP_{name} ") and "\n" not in err


def test_uvicorn_options_let_websocket_frames_past_the_upload_limit() -> None:
    import uvicorn

    settings = Settings(max_upload_bytes=32 * 1024 * 1024)
    options = uvicorn_options(settings)
    assert options["ws_max_size"] > settings.max_upload_bytes
    # The keyword is one uvicorn knows, with the value it will enforce.
    config = uvicorn.Config(app="app.main:create_app", **options)
    assert config.ws_max_size == options["ws_max_size"]


def test_the_health_port_is_a_second_port_of_one_process() -> None:
    assert Settings.from_env({"APP_HEALTH_PORT": "8081"}).health_port == 8081
    assert Settings.from_env({}).health_port is None
    with pytest.raises(ConfigError, match="APP_HEALTH_PORT must differ"):
        Settings.from_env({"APP_HEALTH_PORT": "8000"})
    with pytest.raises(ConfigError, match="APP_WORKERS=1"):
        Settings.from_env({"APP_HEALTH_PORT": "8081", "APP_WORKERS": "2"})
