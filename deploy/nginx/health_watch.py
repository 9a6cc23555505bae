#!/usr/bin/env python3
"""Active health checks for open-source nginx: poll each replica's /health/ready and keep the
ones that fail out of the upstream (stdlib only).

    python deploy/nginx/health_watch.py --conf /etc/nginx/nginx.conf --interval 2 -- \\
        --upstream 10.0.0.11:8000 --upstream 10.0.0.12:8000 --cert ... --key ...

Everything after ``--`` is render.py's arguments. Every ``--interval`` seconds each upstream's
``http://HOST:PORT/health/ready`` must answer 200 within ``--timeout``; a replica that does not
(not ready: model loading, its database unreachable; frozen; gone) is marked ``down`` in a
fresh rendering, written atomically over ``--conf``, and nginx reloads (``nginx -s reload``);
when it answers 200 again it comes back. If every replica fails, none is marked down: nginx
then answers with the replicas' own 503s rather than a blanket 502. Passive checks
(``max_fails``) still act between polls. Under Kubernetes the readinessProbe does this job.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # beside this script


def ready(upstream: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{upstream}/health/ready", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def failing(upstreams: list[str], timeout_s: float) -> frozenset[str]:
    down = frozenset(u for u in upstreams if not ready(u, timeout_s))
    return frozenset() if down == frozenset(upstreams) else down


def apply(conf: Path, text: str, reload_argv: list[str]) -> bool:
    """Write ``text`` over ``conf`` and reload nginx when it changed; True when it did."""
    if conf.exists() and conf.read_text() == text:
        return False
    tmp = conf.with_name(f".{conf.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, conf)
    if reload_argv:
        subprocess.run(reload_argv, check=False, capture_output=True)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ours, theirs = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=Path, required=True, help="the nginx.conf nginx runs")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--nginx", default="nginx")
    parser.add_argument("--once", action="store_true", help="one poll, then exit")
    args = parser.parse_args(ours)
    rendering = render.build_parser().parse_args(theirs)
    reload_argv = [args.nginx, "-e", rendering.error_log, "-s", "reload"]
    reload_argv += ["-p", rendering.prefix, "-c", str(args.conf)]
    while True:
        down = failing(rendering.upstream, args.timeout)
        if apply(args.conf, render.render_args(rendering, down), reload_argv):
            listed = ", ".join(sorted(down)) or "none"
            print(f"health_watch: nginx reloaded; down: {listed}", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
