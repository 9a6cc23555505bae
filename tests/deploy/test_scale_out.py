"""Many stations, one record (issue 18): a PostgreSQL of its own, 3 replicas with
APP_STORAGE=database and nginx in front, all real processes on 127.0.0.1.

- A user registers through replica 1, uploads through replica 2 and opens the result, the
  image and the PDF through replica 3 (the session and the CSRF cookie hold on every replica).
- The login throttle holds across replicas: failures spread over the 3 lock the account.
- Uploads at concurrency 8 through nginx while one replica is killed with SIGKILL: nginx routes
  around it, and every acknowledged upload is in the database with its image, intact.
- PostgreSQL restarted under the same load: clear 503s while it is down, /health/ready says
  why, and the replicas recover without a restart.

The figures are printed (run with -s to see them) and written to the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.storage import EncryptedStore, parse_key
from benchmarks.cluster import (
    Nginx,
    Postgres,
    Replica,
    fleet_env,
    migrate,
    running_nginx,
    running_postgres,
    running_replicas,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fleet_tools")]

PASSWORD = "correct horse battery staple"
CONCURRENCY = 8
TOKEN_MARK = 'name="_csrf_token" value="'


def _token(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, (path, page.status_code, page.text[:300])
    return page.text.split(TOKEN_MARK)[1].split('"')[0]


def _register(client: httpx.Client, username: str) -> None:
    token = _token(client, "/register")
    form = {"username": username, "password": PASSWORD, "confirm": PASSWORD, "_csrf_token": token}
    r = client.post("/register", data=form)
    assert r.status_code == 303, r.text[:500]


def _login(client: httpx.Client, username: str, password: str) -> int:
    token = _token(client, "/login")
    form = {"username": username, "password": password, "_csrf_token": token}
    return client.post("/login", data=form).status_code


def _upload(client: httpx.Client, token: str, patient: str, image: bytes) -> httpx.Response:
    return client.post(
        "/analyses",
        data={"patient": patient, "_csrf_token": token},
        files=[("images", ("lesion.jpg", image, "image/jpeg"))],
    )


@dataclass
class Outcome:
    at: float
    status: int  # 0: no answer at all (transport error)
    analysis: str | None = None
    image: int = 0  # index into the images
    detail: str = ""


@dataclass
class Load:
    """``CONCURRENCY`` clients uploading through nginx until stopped."""

    nginx: Nginx
    cookies: httpx.Cookies
    images: list[bytes]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    t0: float = field(default_factory=time.monotonic)

    def _worker(self, n: int) -> None:
        with self.nginx.client(timeout=20, cookies=self.cookies) as client:
            token = _token(client, "/analyses/new")
            i = 0
            while not self.stop.is_set():
                image = (n + i) % len(self.images)
                i += 1
                try:
                    r = _upload(client, token, f"load-{n}-{i}", self.images[image])
                except httpx.TransportError as exc:
                    self.outcomes.append(Outcome(time.monotonic(), 0, detail=repr(exc)))
                    time.sleep(0.05)
                    continue
                location = r.headers.get("location", "")
                analysis = location.rsplit("/", 1)[-1] if r.status_code == 303 else None
                detail = "" if analysis else r.text[:20000]
                self.outcomes.append(
                    Outcome(time.monotonic(), r.status_code, analysis, image, detail)
                )
                if r.status_code >= 500:
                    time.sleep(0.05)  # a client backs off a little on 5xx

    def run(self, seconds: float, during: Callable[[Load], None]) -> None:
        threads = [threading.Thread(target=self._worker, args=(n,)) for n in range(CONCURRENCY)]
        self.t0 = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            during(self)
            remaining = seconds - (time.monotonic() - self.t0)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def acknowledged(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.analysis]

    def errors_between(self, start: float, end: float) -> list[Outcome]:
        return [
            o for o in self.outcomes if start <= o.at <= end and (o.status >= 500 or o.status == 0)
        ]


def _database_rows(pg: Postgres) -> list[dict[str, Any]]:
    import asyncpg

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(pg.url)
        try:
            rows = await conn.fetch(
                "SELECT a.id::text AS id, a.image_sha256, a.image_path, b.data, b.sha256, b.size "
                "FROM analysis a LEFT JOIN stored_blob b ON b.name = a.image_path"
            )
            orphans = await conn.fetchval(
                "SELECT count(*) FROM stored_blob WHERE name NOT IN "
                "(SELECT image_path FROM analysis UNION "
                "SELECT report_path FROM analysis WHERE report_path IS NOT NULL)"
            )
        finally:
            await conn.close()
        return [dict(r) for r in rows] + [{"orphans": orphans}]

    return asyncio.run(fetch())


def _check_nothing_lost(
    pg: Postgres, env: dict[str, str], load: Load, images: list[bytes]
) -> dict[str, int]:
    """Every acknowledged upload has its row and its image, decrypting to the very bytes sent."""
    *rows, extra = _database_rows(pg)
    by_id = {r["id"]: r for r in rows}
    store = EncryptedStore(Path("/nonexistent"), parse_key(env["APP_STORAGE_KEY"]))
    lost, damaged = [], []
    for outcome in load.acknowledged():
        row = by_id.get(outcome.analysis or "")
        if row is None:
            lost.append(outcome.analysis)
            continue
        sent = images[outcome.image]
        blob = bytes(row["data"]) if row["data"] is not None else b""
        if (
            not blob
            or row["size"] != len(blob)
            or row["sha256"] != hashlib.sha256(blob).hexdigest()
            or store.open_blob(row["image_path"], blob) != sent
            or row["image_sha256"] != hashlib.sha256(sent).hexdigest()
        ):
            damaged.append(outcome.analysis)
    without_blob = [r["id"] for r in rows if r["data"] is None]
    assert not lost, f"acknowledged but not in the database: {lost[:5]}"
    assert not damaged, f"acknowledged but not intact: {damaged[:5]}"
    assert not without_blob, f"rows without their image: {without_blob[:5]}"
    assert extra["orphans"] == 0, "blobs that no row refers to (half-written uploads)"
    return {"rows": len(rows), "acknowledged": len(load.acknowledged()), "lost": len(lost)}


def _ready(replica: Replica) -> httpx.Response:
    return httpx.get(replica.url + "/health/ready", timeout=5)


def test_many_stations_one_record(
    fleet_model: Path, pg_root: Path, tmp_path: Path, fixture_images: list[tuple[Path, str]]
) -> None:
    figures: dict[str, Any] = {}
    # the smaller originals: more uploads per second on 2 shared cores
    images = sorted((p.read_bytes() for p, _ in fixture_images), key=len)[:4]
    with running_postgres(pg_root) as pg:
        env = fleet_env(pg.url, {"APP_MODEL_PATH": str(fleet_model)})
        migrate(env, tmp_path / "migrate")
        with running_replicas(3, env, tmp_path) as replicas:
            upstreams = [f"127.0.0.1:{r.port}" for r in replicas]
            with running_nginx(tmp_path / "nginx", upstreams) as nginx:
                figures |= _one_record_through_three_replicas(replicas, images)
                figures |= _throttle_across_replicas(replicas)
                figures |= _kill_a_replica_under_load(nginx, replicas, pg, env, images)
                figures |= _restart_postgres_under_load(nginx, replicas, pg, env, images)
    (tmp_path / "scale-out.json").write_text(json.dumps(figures, indent=2))
    print("\nscale-out figures:", json.dumps(figures, indent=2))


def _one_record_through_three_replicas(
    replicas: list[Replica], images: list[bytes]
) -> dict[str, Any]:
    one, two, three = replicas
    with httpx.Client(base_url=one.url, timeout=20) as first:
        _register(first, "screening")
        cookies = first.cookies
    with httpx.Client(base_url=two.url, timeout=20, cookies=cookies) as second:
        token = _token(second, "/analyses/new")  # the session made on replica 1 holds here
        r = _upload(second, token, "Station Two Patient", images[0])
        assert r.status_code == 303, r.text[:500]
        location = r.headers["location"]
    with httpx.Client(base_url=three.url, timeout=30, cookies=cookies) as third:
        page = third.get(location)
        assert page.status_code == 200 and "Station Two Patient" in page.text
        image = third.get(location + "/image")
        assert image.status_code == 200 and image.content == images[0]
        pdf = third.get(location + "/report.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    with httpx.Client(base_url=one.url, timeout=30, cookies=cookies) as again:
        # replica 1 reads the report replica 3 stored: the same bytes, not a new build
        assert again.get(location + "/report.pdf").content == pdf.content
    return {"cross_replica": "registered on 1, uploaded on 2, read on 3 and 1"}


def _throttle_across_replicas(replicas: list[Replica]) -> dict[str, Any]:
    with httpx.Client(base_url=replicas[0].url, timeout=20) as client:
        _register(client, "guarded")
    codes = []
    for i in range(6):
        with httpx.Client(base_url=replicas[i % 3].url, timeout=20) as client:
            codes.append(_login(client, "guarded", "not the password"))
    assert codes == [401] * 5 + [429], codes
    for replica in replicas:  # locked everywhere, for the right password too
        with httpx.Client(base_url=replica.url, timeout=20) as client:
            assert _login(client, "guarded", PASSWORD) == 429
    return {"throttle": "5 failures over 3 replicas lock the account on all 3"}


def _loader_cookies(nginx: Nginx, username: str) -> httpx.Cookies:
    with nginx.client(timeout=20) as client:
        _register(client, username)
        return client.cookies


def _kill_a_replica_under_load(
    nginx: Nginx, replicas: list[Replica], pg: Postgres, env: dict[str, str], images: list[bytes]
) -> dict[str, Any]:
    load = Load(nginx, _loader_cookies(nginx, "loader1"), images)
    killed_at: list[float] = []

    def kill(load: Load) -> None:
        time.sleep(4)
        killed_at.append(time.monotonic())
        replicas[1].kill()

    load.run(12, kill)
    kill_t = killed_at[0]
    after = [o for o in load.acknowledged() if o.at > kill_t + 1]
    window = load.errors_between(kill_t, kill_t + 3)
    later = load.errors_between(kill_t + 3, float("inf"))
    counts = _check_nothing_lost(pg, env, load, images)
    assert after, "no upload went through after the kill"
    assert len(window) <= CONCURRENCY, f"{len(window)} errors in the kill window"
    assert not later, (
        f"errors after the kill window: {[(o.status, o.detail[:80]) for o in later[:3]]}"
    )
    assert not [o for o in load.outcomes if o.status not in (303, 502, 0)], "unexpected answers"
    return {
        "kill": {
            "seconds": 12,
            "concurrency": CONCURRENCY,
            "requests": len(load.outcomes),
            "acknowledged": counts["acknowledged"],
            "lost": counts["lost"],
            "rows_in_database": counts["rows"],
            "errors_in_kill_window_3s": len(window),
            "error_statuses": sorted({o.status for o in window}),
            "acknowledged_after_kill": len(after),
        }
    }


def _restart_postgres_under_load(
    nginx: Nginx, replicas: list[Replica], pg: Postgres, env: dict[str, str], images: list[bytes]
) -> dict[str, Any]:
    alive = [r for r in replicas if r.process.poll() is None]
    load = Load(nginx, _loader_cookies(nginx, "loader2"), images)
    marks: dict[str, Any] = {}
    down_probe: list[dict[str, Any]] = []

    def restart(load: Load) -> None:
        time.sleep(3)
        marks["stop"] = time.monotonic()
        pg.stop("fast")
        time.sleep(1)
        r = _ready(alive[0])
        down_probe.append({**r.json(), "http": r.status_code})
        with nginx.client(timeout=20, cookies=load.cookies) as client:  # a page, through nginx
            page = client.get("/history", headers={"Accept": "application/json"})
            marks["page_status"] = page.status_code
            marks["page_error"] = page.json().get("error") if page.status_code == 503 else 0
        time.sleep(2)
        marks["start"] = time.monotonic()
        pg.start()
        marks["started"] = time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(_ready(r).status_code == 200 for r in alive):
                marks["ready"] = time.monotonic()
                return
            time.sleep(0.1)

    load.run(14, restart)
    assert down_probe and down_probe[0]["http"] == 503, down_probe
    assert down_probe[0]["down"] == ["database"] and down_probe[0]["checks"]["database"]["detail"]
    # nginx passes the app's 503 on: not its own 502 for "no live upstreams"
    assert (marks["page_status"], marks["page_error"]) == (503, "database_unavailable"), marks
    assert "ready" in marks, "the replicas did not report ready within 30 s of the restart"
    first_ack = min((o.at for o in load.acknowledged() if o.at > marks["started"]), default=None)
    assert first_ack is not None, "no upload went through after PostgreSQL came back"
    during = [o for o in load.outcomes if marks["stop"] <= o.at <= marks["started"]]
    statuses = sorted({o.status for o in during})
    unclear = [o for o in during if o.status not in (303, 503, 502)]
    assert not unclear, (
        f"while PostgreSQL was down: {[(o.status, o.detail[:120]) for o in unclear[:3]]}"
    )
    clear = [o for o in during if o.status == 503]
    assert clear and all("database" in o.detail.lower() for o in clear), clear[:1]
    counts = _check_nothing_lost(pg, env, load, images)
    # Requests in flight while the replicas' pools reconnect may still fail (seen once: one
    # nginx 502 under a load average of 9); a bounded few in the 2 s after ready, none later.
    settle = max(first_ack, marks["ready"] + 2)
    failed = [o for o in load.outcomes if o.at > first_ack and (o.status >= 500 or o.status == 0)]
    settling = [o for o in failed if o.at <= settle]
    after_restart = [o for o in failed if o.at > settle]
    assert len(settling) <= CONCURRENCY, [(o.status, o.detail[:120]) for o in settling[:3]]
    assert not after_restart, [(o.status, o.detail[:120]) for o in after_restart[:3]]
    return {
        "postgres_restart": {
            "down_s": round(marks["start"] - marks["stop"], 2),
            "answers_while_down": {str(s): sum(o.status == s for o in during) for s in statuses},
            "ready_probe_while_down": down_probe[0]["checks"]["database"]["detail"][:120],
            "recovery_s_ready": round(marks["ready"] - marks["started"], 2),
            "recovery_s_first_upload": round(first_ack - marks["started"], 2),
            "errors_while_settling_2s": len(settling),
            "acknowledged": counts["acknowledged"],
            "lost": counts["lost"],
        }
    }
