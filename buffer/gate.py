"""Staleness control (docs/design.md section 6; AReaL's admission rule, Fu et al. 2025).

Admission: with ``v`` the learner version, ``B`` groups per learner step and ``eta`` the
maximum staleness, a new group may be created only while

    groups_consumed + groups_ready + groups_in_flight < (v + eta + 1) * B

so generation never runs more than ``eta`` versions ahead of the learner.

Drop rule: at batch assembly a group whose oldest token was generated more than ``eta``
versions before the learner's current version is dropped (or kept, if configured, with the
importance-weight correction of the loss).
"""

from __future__ import annotations


def admission_room(version: int, eta: int, groups_per_step: int, consumed: int, ready: int, in_flight: int) -> int:
    """How many new groups the gate admits now (0 when generation is far enough ahead)."""
    limit = (version + eta + 1) * groups_per_step
    return max(0, limit - consumed - ready - in_flight)


def too_stale(version: int, oldest_token_version: int, eta: int) -> bool:
    """True when a group's oldest token is more than ``eta`` versions behind ``version``."""
    return version - oldest_token_version > eta
