"""A/B of the service from two checkouts: ``python -m benchmarks.ab A_DIR B_DIR [--rounds N]``.

A setting is an A/B of one checkout against itself: ``python -m benchmarks.ab . .
--env-b APP_MICROBATCH_MAX=1`` runs B with that environment on top of A's.

Both run ``python -m app`` from their own working tree (API auth off, so the token check's
database write does not drown a small change), cold in every round, A-B then B-A, with the
peers suite's measurement (c=1 latency, c=8 throughput, the server's CPU time per request at
c=8); prints the per-round ratios B/A and their medians. Used for the floor-gap candidates in
RESULTS.md (git worktrees make the checkouts: ``git worktree add --detach benchmarks/.work/b
HEAD``, then edit there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.artifacts import resolve_models
from benchmarks.images import upload_images
from benchmarks.peers.suite import Peer, Rounds, _json_label, _multipart, measure
from benchmarks.server import REPO, service_target

AB_DIR = REPO / "benchmarks" / "results" / "ab"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=300, help="at c=1; 4x that at c=8")
    p.add_argument("--label", help="what B changes; with it the result is recorded in results/ab/")
    p.add_argument(
        "--env-b",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for B's server only (repeatable)",
    )
    args = p.parse_args()
    env_b = dict(parse_env(item) for item in args.env_b)
    logging.basicConfig(level=logging.WARNING)
    models = resolve_models()
    samples, _ = upload_images()
    rounds = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        peers = []
        for name, tree in (("A", args.a), ("B", args.b)):
            target = service_target(models, Path(tmp) / name)
            extra = env_b if name == "B" else {}
            target = dataclasses.replace(
                target, name=name, workdir=tree.resolve(), env={**target.env, **extra}
            )
            peers.append(Peer(target, _multipart("image"), _json_label, None))
        for r in range(args.rounds):
            for peer in peers if r % 2 == 0 else peers[::-1]:
                measure(
                    peer,
                    list(samples),
                    (args.requests, 4 * args.requests),
                    60.0,
                    rounds,
                    None,
                    samples,
                )
            cpu = {k: v[-1] for k, v in rounds.server_cpu.items() if len(v) == r + 1}
            print(
                f"round {r + 1}: p50 A {rounds.p50['A'][-1]:.2f} B {rounds.p50['B'][-1]:.2f} ms; "
                f"req/s A {rounds.rps['A'][-1]:.1f} B {rounds.rps['B'][-1]:.1f}"
                + (f"; CPU/req A {cpu['A']:.2f} B {cpu['B']:.2f} ms" if len(cpu) == 2 else ""),
                flush=True,
            )
    for what, key in (
        ("p50 c=1", "p50"),
        ("req/s c=8", "rps"),
        ("CPU ms/req c=8", "server_cpu"),
        ("event loop CPU ms/req c=8", "loop_cpu"),
        ("other threads' waits/req c=8", "worker_waits"),
    ):
        per_round = getattr(rounds, key)
        if len(per_round.get("A", [])) != len(per_round.get("B", [])) or not per_round.get("A"):
            continue  # CPU time: only where the server's CPU could be read in every round
        ratio = np.array(per_round["B"]) / np.array(per_round["A"])
        print(f"B/A {what}: median {np.median(ratio):.3f} ({ratio.min():.3f}–{ratio.max():.3f})")
    if args.label:
        path = record(args.label, rounds, args.requests, env_b)
        print(f"recorded: {path}")
    return 0


def parse_env(item: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (NAME, VALUE); argparse reports anything else."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env-b wants NAME=VALUE, not {item!r}")
    return name, value


def record(label: str, rounds: Rounds, requests: int, env_b: dict[str, str] | None = None) -> Path:
    """Write one A/B result for RESULTS.md's floor-gap section."""
    from benchmarks import machine

    AB_DIR.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40]
    path = AB_DIR / f"{now:%Y-%m-%d}-{slug}.json"
    n = 2
    while path.exists():  # the same label twice in a day: keep both runs
        path = AB_DIR / f"{now:%Y-%m-%d}-{slug}-{n}.json"
        n += 1
    data = {
        "label": label,
        "created_utc": now.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.ab A B --label ...",
        "requests": {"c1": requests, "c8": 4 * requests},
        "env_b": env_b or {},
        "machine": machine.describe(),
        "p50_c1_ms": rounds.p50,
        "rps_c8": rounds.rps,
        # The server's CPU time per request at c=8 (user + system, its threads together): less
        # moved by other work on the machine than the wall-clock figures.
        "server_cpu_ms_c8": rounds.server_cpu,
        # Of it, the event loop's (the main thread's), and how often the other threads blocked.
        "loop_cpu_ms_c8": rounds.loop_cpu,
        "worker_waits_c8": rounds.worker_waits,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
