"""The audit log: who did what to which record, when and from which address."""

from __future__ import annotations

import logging

from app.db.tables import AuditEvent

log = logging.getLogger(__name__)


async def record(
    action: str,
    *,
    actor_id: int | None,
    actor_name: str = "",
    target: str | None = None,
    address: str = "",
    detail: str = "",
) -> None:
    """Append one event; an audit failure is logged, never shown to the user as their error."""
    try:
        await AuditEvent.insert(
            AuditEvent(
                actor=actor_id,
                actor_name=actor_name[:64],
                action=action[:48],
                target=target,
                address=address[:64],
                detail=detail[:2000],
            )
        ).run()
    except Exception:  # the action itself succeeded; losing its audit line must be loud
        log.exception("could not write audit event %s for %s", action, actor_name)
