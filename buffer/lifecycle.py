"""Lifecycle of a group (one prompt and its n_i rollouts) inside the buffer.

    WAITING --first lease--> IN_FLIGHT --all n_i samples received--> READY
    READY --handed to the learner--> CONSUMED
    READY --set aside at batch assembly (too stale; zero variance when filtered)--> DROPPED

A worker that vanishes or a lease that times out does not change the state: the samples it
held go back to the group's pending queue and are handed out again. Statistics (k_i, G_i)
are updated once, on IN_FLIGHT -> READY; the prompt then returns to the pool.
"""

from __future__ import annotations

import enum


class GroupState(enum.Enum):
    WAITING = "waiting"
    IN_FLIGHT = "in_flight"
    READY = "ready"
    CONSUMED = "consumed"
    DROPPED = "dropped"


TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.WAITING: frozenset({GroupState.IN_FLIGHT}),
    GroupState.IN_FLIGHT: frozenset({GroupState.READY}),
    GroupState.READY: frozenset({GroupState.CONSUMED, GroupState.DROPPED}),
    GroupState.CONSUMED: frozenset(),
    GroupState.DROPPED: frozenset(),
}


def check_transition(old: GroupState, new: GroupState) -> GroupState:
    """Return ``new`` after asserting that the lifecycle allows ``old -> new``."""
    assert new in TRANSITIONS[old], f"group cannot go from {old.value} to {new.value}"
    return new
