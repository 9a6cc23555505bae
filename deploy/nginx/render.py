#!/usr/bin/env python3
"""Write the nginx configuration that fronts the app's replicas (stdlib only).

    python deploy/nginx/render.py --upstream 10.0.0.11:8000 --upstream 10.0.0.12:8000 \\
        --max-upload-mb 16 --cert /etc/nginx/tls/tls.crt --key /etc/nginx/tls/tls.key \\
        > /etc/nginx/nginx.conf

What it sets up, and why:
- TLS on ``--https-port`` (443); plain HTTP on ``--http-port`` (80) redirects there, except the
  probes. Make a test certificate with ``deploy/nginx/make-cert.sh``.
- ``client_max_body_size`` = APP_MAX_UPLOAD_MB, so nginx refuses (413) what the app would.
- WebSocket upgrade for the live camera (``/analyses/live/ws``, ``/api/v1/live``).
- ``X-Forwarded-For/-Proto/-Host`` set (never passed on from the client); the app believes
  them only from APP_TRUSTED_PROXIES, which must name this nginx's address.
- Health, passive: a replica that refuses connections, times out or answers 502/504 counts
  as failed (``max_fails``) and gets no traffic for ``fail_timeout``; the request is passed to
  the next replica, except a POST that already reached one (nginx never repeats a
  non-idempotent request, so an upload is never stored twice). A 503 is passed to the client
  as it is: the app's clear answer (database down, overloaded, model loading).
- Health, active: open-source nginx has none, so ``deploy/nginx/health_watch.py`` polls each
  replica's ``/health/ready`` and re-renders this file with the ones that fail marked
  ``down`` (then ``nginx -s reload``). Under Kubernetes the readinessProbe does this instead.
"""

from __future__ import annotations

import argparse
import sys

TEMPLATE = """\
# Rendered by deploy/nginx/render.py; edit the script, not this file.
{user}worker_processes {workers};
pid {prefix}nginx.pid;
error_log {error_log} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {access_log};
    client_body_temp_path {prefix}client_body;
    proxy_temp_path {prefix}proxy;
    fastcgi_temp_path {prefix}fastcgi;
    uwsgi_temp_path {prefix}uwsgi;
    scgi_temp_path {prefix}scgi;
    server_tokens off;

    # = APP_MAX_UPLOAD_MB: the app's own limit on a whole request body (413 above it).
    client_max_body_size {max_upload_mb}m;
    # The whole upload is read here first, so slow clients hold nginx, not a replica; a body
    # that stalls longer than APP_BODY_IDLE_S between reads is dropped (408).
    client_body_timeout {body_idle_s}s;
    client_body_buffer_size 1m;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    upstream skin_lesion_app {{
{servers}
        keepalive 32;
    }}

    server {{
        listen {listen}:{http_port};
        location ~ ^/health/(live|ready)$ {{
            proxy_pass http://skin_lesion_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location / {{
            return 308 https://$host{https_suffix}$request_uri;
        }}
    }}

    server {{
        # "listen ... http2" rather than "http2 on": Debian 12 ships nginx 1.22 (newer ones warn)
        listen {listen}:{https_port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:10m;

        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_connect_timeout {connect_timeout_s}s;
        proxy_read_timeout 120s;
        proxy_send_timeout 120s;
        # A replica that is gone or frozen: try the next one (never a POST it received). Not on
        # 503: that is the app's own clear answer (database down, overloaded), and counting it
        # would mark every replica failed during a database outage and turn those answers
        # into nginx's bare 502s. A replica that is not ready is health_watch.py's to remove.
        proxy_next_upstream error timeout http_502 http_504;
        proxy_buffering off;

        location / {{
            proxy_pass http://skin_lesion_app;
        }}
        # Live camera sockets stay open while a clinician films.
        location ~ ^/(analyses/live/ws|api/v1/live)$ {{
            proxy_pass http://skin_lesion_app;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def render(
    upstreams: list[str],
    cert: str,
    key: str,
    max_upload_mb: int = 16,
    http_port: int = 80,
    https_port: int = 443,
    listen: str = "0.0.0.0",
    prefix: str = "/var/lib/nginx/",
    error_log: str = "/var/log/nginx/error.log",
    access_log: str = "/var/log/nginx/access.log",
    user: str | None = None,
    workers: str = "auto",
    max_fails: int = 1,
    fail_timeout_s: int = 5,
    connect_timeout_s: int = 2,
    body_idle_s: int = 10,
    down: frozenset[str] = frozenset(),
) -> str:
    if not upstreams:
        raise ValueError("at least one --upstream host:port")
    if max_upload_mb < 1:
        raise ValueError("--max-upload-mb must be at least 1")
    # ``down``: replicas deploy/nginx/health_watch.py found not ready on /health/ready
    servers = "\n".join(
        f"        server {u} max_fails={max_fails} fail_timeout={fail_timeout_s}s"
        + (" down;" if u in down else ";")
        for u in upstreams
    )
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return TEMPLATE.format(
        user=f"user {user};\n" if user else "",
        workers=workers,
        prefix=prefix,
        error_log=error_log,
        access_log=access_log,
        max_upload_mb=max_upload_mb,
        body_idle_s=body_idle_s,
        servers=servers,
        listen=listen,
        http_port=http_port,
        https_port=https_port,
        https_suffix="" if https_port == 443 else f":{https_port}",
        cert=cert,
        key=key,
        connect_timeout_s=connect_timeout_s,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", action="append", required=True, help="host:port, repeated")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--max-upload-mb", type=int, default=16, help="= APP_MAX_UPLOAD_MB")
    parser.add_argument("--body-idle-s", type=int, default=10, help="= APP_BODY_IDLE_S")
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--https-port", type=int, default=443)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--prefix", default="/var/lib/nginx/", help="pid file and temp dirs")
    parser.add_argument("--error-log", default="/var/log/nginx/error.log")
    parser.add_argument("--access-log", default="/var/log/nginx/access.log")
    parser.add_argument("--user", default=None, help="the worker processes' user")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--fail-timeout-s", type=int, default=5)
    return parser


def render_args(args: argparse.Namespace, down: frozenset[str] = frozenset()) -> str:
    return render(
        args.upstream,
        args.cert,
        args.key,
        max_upload_mb=args.max_upload_mb,
        http_port=args.http_port,
        https_port=args.https_port,
        listen=args.listen,
        prefix=args.prefix,
        error_log=args.error_log,
        access_log=args.access_log,
        user=args.user,
        workers=args.workers,
        fail_timeout_s=args.fail_timeout_s,
        body_idle_s=args.body_idle_s,
        down=down,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = render_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
