"""The hostile corpus, replayed against the real server (``make redteam``), holds everywhere."""

from __future__ import annotations

import pytest

from tests.hardening.replay import replay

pytestmark = pytest.mark.slow


def test_every_hostile_input_is_refused_cleanly_on_every_entry_point() -> None:
    attempts = replay()
    assert len(attempts) >= 40
    failed = [a for a in attempts if not a.held]
    assert failed == [], failed
