"""Uploads admitted at their headers count against the bound until their ASGI task counts
itself (app.admission ``admit_soon``): the rest of the same loop turn is refused at the
headers, and the count never outlives the turn."""

from __future__ import annotations

import asyncio

from app.admission import AdmissionControl
from app.metrics import Metrics


async def _no_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not called here")


async def test_a_place_taken_at_the_headers_is_counted_until_the_next_turn() -> None:
    gate = AdmissionControl(_no_app, 2, [], Metrics())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    gate.in_flight = 1
    assert not gate.full
    seen: list[tuple[int, int]] = []

    async def asgi_task() -> None:  # what the ASGI task does first: count itself
        seen.append((gate.pending, gate.in_flight))
        gate.in_flight += 1

    gate.admit_soon(loop)
    task = loop.create_task(asgi_task())  # queued after the reset, as uvicorn's is
    assert gate.full  # a second upload in this turn is refused at its headers
    await task
    assert seen == [(0, 1)]  # the reset ran before the task counted itself: no double count
    assert gate.pending == 0 and gate.in_flight == 2 and gate.full
    gate.in_flight = 0
    gate.admit_soon(loop)  # a task that never comes: the count still ends with the turn
    await asyncio.sleep(0)
    assert gate.pending == 0 and not gate.full
