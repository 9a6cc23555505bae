"""Accounts: registration rules, login, throttling, CSRF, sessions, rehash, start-up secrets."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from litestar.testing import TestClient

from app.config import ConfigError, Settings
from app.db.tables import User
from app.main import create_app

from .conftest import PASSWORD, csrf, login, make_client, register


def test_auth_register_login_logout(client: TestClient[Litestar]) -> None:
    register(client, "Alice")
    assert client.get("/dashboard").status_code == 200
    token = csrf(client, "/dashboard")
    r = client.post("/logout", data={"_csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert login(client, "alice") == 303  # usernames are case-insensitive
    assert "Alice" in client.get("/dashboard").text


def test_auth_logout_ends_copies_of_the_session_cookie(client: TestClient[Litestar]) -> None:
    # A session cookie copied before logout (a shared kiosk, a stolen cookie) must not outlive
    # it: cookies are client-side, so logout bumps the account's session epoch.
    register(client, "alice")
    other_device = TestClient(app=client.app)  # shares the running app, has its own cookies
    login(other_device, "alice")
    assert other_device.get("/dashboard", follow_redirects=False).status_code == 200
    copied = dict(client.cookies)
    token = csrf(client, "/dashboard")
    assert client.post("/logout", data={"_csrf_token": token}).status_code == 200
    client.cookies.clear()
    client.cookies.update(copied)
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # A page that renders after the stale session was cleared in the same request (it read
    # Litestar's `Empty` marker as a dict: a 500).
    client.cookies.update(copied)
    assert client.get("/login").status_code == 200
    # It ends the account's other sessions too: one epoch per account, not per cookie.
    assert other_device.get("/dashboard", follow_redirects=False).status_code == 303
    assert login(client, "alice") == 303
    assert client.get("/dashboard").status_code == 200  # and a new login works


def test_auth_session_cookie_flags(client: TestClient[Litestar]) -> None:
    token = csrf(client, "/register")
    r = client.post(
        "/register",
        data={"username": "bob", "password": PASSWORD, "confirm": PASSWORD, "_csrf_token": token},
        follow_redirects=False,
    )
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Secure" not in cookie  # plain HTTP here


def test_auth_secure_cookie_over_https(sqlite_settings: Settings) -> None:
    app = create_app(sqlite_settings)
    with TestClient(app=app, base_url="https://testserver.local") as client:
        r = client.get("/login")
        cookies = r.headers.get_list("set-cookie")
        assert cookies and all("Secure" in c for c in cookies)


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("carol", "short", "at least 12 characters"),
        ("carolcarol12", "CAROLCAROL12", "differ from the username"),
        # the red team's accepted passwords, and the username plus a digit
        ("carol", "aaaaaaaaaaaa", "harder password"),
        ("carol", "password1234", "harder password"),
        ("carol", "123456789012", "harder password"),
        ("carolinewest", "carolinewest1", "harder password"),
    ],
)
def test_auth_password_rules(
    client: TestClient[Litestar], username: str, password: str, message: str
) -> None:
    token = csrf(client, "/register")
    r = client.post(
        "/register",
        data={
            "username": username,
            "password": password,
            "confirm": password,
            "_csrf_token": token,
        },
    )
    assert r.status_code == 400
    assert message in r.text


def test_auth_username_unique_case_insensitive(client: TestClient[Litestar]) -> None:
    register(client, "Dave")
    client.cookies.clear()
    token = csrf(client, "/register")
    r = client.post(
        "/register",
        data={"username": "DAVE", "password": PASSWORD, "confirm": PASSWORD, "_csrf_token": token},
    )
    assert r.status_code == 400 and "taken" in r.text


def test_auth_csrf_refuses_form_without_token(client: TestClient[Litestar]) -> None:
    client.get("/register")  # has the CSRF cookie, but the form omits the token
    r = client.post(
        "/register",
        data={"username": "mallory", "password": PASSWORD, "confirm": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert login(client, "mallory") == 401  # the account was not created


def test_auth_same_message_and_throttling(client: TestClient[Litestar]) -> None:
    register(client, "erin")
    client.cookies.clear()
    token = csrf(client, "/login")
    unknown = client.post(
        "/login", data={"username": "nobody", "password": "x" * 12, "_csrf_token": token}
    )
    wrong = client.post(
        "/login", data={"username": "erin", "password": "x" * 12, "_csrf_token": token}
    )
    assert unknown.status_code == wrong.status_code == 401
    assert "Invalid username or password." in unknown.text
    assert "Invalid username or password." in wrong.text
    for _ in range(4):  # failures 2..5
        assert login(client, "erin", "wrong-password!") == 401
    # Sixth try within the window is refused even with the right password.
    r = client.post(
        "/login",
        data={"username": "erin", "password": PASSWORD, "_csrf_token": csrf(client, "/login")},
    )
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert login(client, "someone-else", "wrong-password!") == 401  # other accounts unaffected


async def _stored_hash(username: str) -> str:
    row = await User.select(User.password_hash).where(User.username_key == username).first()
    assert row is not None
    return str(row["password_hash"])


def test_auth_rehash_when_parameters_change(client: TestClient[Litestar]) -> None:
    register(client, "frank")
    before = client.blocking_portal.call(_stored_hash, "frank")
    assert "m=1024" in before
    client.app.state.password_hasher = PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1)
    client.cookies.clear()
    assert login(client, "frank") == 303
    after = client.blocking_portal.call(_stored_hash, "frank")
    assert "m=2048" in after and after != before
    client.cookies.clear()
    assert login(client, "frank") == 303  # the new hash verifies


def test_auth_idle_timeout(client: TestClient[Litestar], monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    register(client, "grace")
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    later = time.time() + 31 * 60  # default idle timeout is 30 minutes
    monkeypatch.setattr("app.auth.session.time.time", lambda: later)
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_auth_refuses_to_start_without_secret(web_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="APP_SECRET_KEY"):
        create_app(replace(web_settings, secret_key=None, dev=False))
    with pytest.raises(ConfigError, match="APP_STORAGE_KEY"):
        create_app(replace(web_settings, storage_key=None, dev=False))
    # Dev mode generates them instead (and says where).
    create_app(replace(web_settings, secret_key=None, storage_key=None, dev=True))
    assert (web_settings.data_dir / "secrets.json").is_file()


def _dev_secrets(data_dir: Path, start: Any) -> str:  # start: a Manager().Barrier proxy
    start.wait()  # all workers look for secrets.json at the same moment
    settings = Settings(data_dir=data_dir, dev=True).with_secrets()
    return f"{settings.secret_key}|{settings.storage_key}"


def test_dev_secrets_are_shared_by_workers_starting_together(tmp_path: Path) -> None:
    # With APP_WORKERS > 1 every worker generates secrets on a first start; they must all
    # end up with the stored ones, or images encrypted by one worker are lost.
    workers = 6
    with multiprocessing.Manager() as manager:
        start = manager.Barrier(workers)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            keys = pool.starmap(_dev_secrets, [(tmp_path, start)] * workers)
    stored = json.loads((tmp_path / "secrets.json").read_text())
    assert set(keys) == {f"{stored['secret_key']}|{stored['storage_key']}"}
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temp files left
    (tmp_path / "secrets.json").write_text(json.dumps({"secret_key": "x"}))
    with pytest.raises(ConfigError, match="lacks storage_key"):
        Settings(data_dir=tmp_path, dev=True).with_secrets()


def test_auth_refuses_to_start_with_pending_migrations(web_settings: Settings) -> None:
    # The test client wraps lifespan failures in an ExceptionGroup; find ours inside it.
    with pytest.raises(BaseException) as info:  # noqa: SIM117
        with make_client(web_settings):  # not migrated, not dev mode
            pass
    errors = info.value.exceptions if isinstance(info.value, BaseExceptionGroup) else [info.value]
    assert any(isinstance(e, ConfigError) and "python -m app migrate" in str(e) for e in errors), (
        errors
    )


@pytest.mark.parametrize("mode", ["invite", "closed"])
def test_registration_outside_open_mode_reveals_nothing(
    sqlite_settings: Settings, mode: str
) -> None:
    with make_client(replace(sqlite_settings, registration=mode)) as client:
        page = client.get("/register")
        assert page.status_code == 200 and 'id="register-closed"' in page.text
        assert 'name="password"' not in page.text
        answers = []
        for username in ("admin", "surely-nobody-has-this-name"):
            r = client.post(
                "/register",
                data={
                    "username": username,
                    "password": PASSWORD,
                    "confirm": PASSWORD,
                    "_csrf_token": csrf(client, "/login"),
                },
                follow_redirects=False,
            )
            answers.append((r.status_code, "administrator" in r.text, "taken" in r.text))
        assert answers == [(403, True, False), (403, True, False)]


def test_production_defaults_to_invite_and_dev_to_open() -> None:
    assert Settings(dev=False).registration_mode == "invite"
    assert Settings(dev=True).registration_mode == "open"
    assert Settings.from_env({"APP_REGISTRATION": "closed"}).registration_mode == "closed"
    with pytest.raises(ConfigError, match="APP_REGISTRATION"):
        Settings.from_env({"APP_REGISTRATION": "everyone"})


def test_create_user_from_the_command_line(sqlite_settings: Settings) -> None:
    from app.auth.admin import AdminError, create_user

    with pytest.raises(AdminError, match="harder password"):
        create_user(sqlite_settings, "frank", "password1234")
    create_user(sqlite_settings, "frank", PASSWORD, "admin")
    with pytest.raises(AdminError, match="exists"):
        create_user(sqlite_settings, "FRANK", PASSWORD)
    with make_client(replace(sqlite_settings, registration="invite")) as client:
        login(client, "frank")
        assert client.get("/audit").status_code == 200  # an admin
