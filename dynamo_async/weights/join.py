"""The join protocol of one weight broadcast: offer, replies, plan (docs/design.md section 7).

No member can stall the learner for long: the learner forms a process group only with the
members that said, in time, that they are ready, and waits for them at most
``weights.join_timeout_s``. Broadcast ``k`` runs:

1. Offer. The learner writes ``SyncOffer(k, version, members, join_timeout_s, token)`` under
   ``wsync/offer/<k>`` and sets ``wsync/latest`` to ``k``.
2. Replies. Each receiver follows the offers in order. One that is named, whose token is its
   Welcome's and whose version is above the one it holds, writes ``SyncReply("join",
   generation)`` under ``wsync/reply/<k>/<member>`` (``generation``: the group it still holds);
   one that holds that version already replies ``"have"``. Anything else is ignored and counted
   (``WeightReceiver.rejected_plans``). An offer whose plan exists already (the receiver was
   stopped or slow) is skipped without a reply.
3. Window. The learner polls the replies until every member replied or ``join_timeout_s``
   passed. A laggard (a member that missed the previous offer: stopped, slow, or a fake that
   never joins) does not hold the window open: once every other member replied, it gets at
   most ``LAGGARD_WAIT_S`` from the offer on. So a member that never joins costs one join
   timeout, not one per step; a live one replies within milliseconds and is no laggard again.
4. Plan. The learner writes ``SyncPlan(k, generation, ranks, manifest, token)`` under
   ``wsync/plan/<k>`` with the members that joined in time (possibly none). That closes the
   window: a receiver that replied later finds itself not named and skips the plan. The
   generation is kept when the joined members are the last group's and each still holds it;
   otherwise it is the next one (a new process group).
5. Broadcast. The learner and the named receivers form or reuse the generation's process group
   and broadcast the buckets; the rendezvous and each collective time out after
   ``weights.timeout_s``, which bounds a member that joined and then stopped.

Members that missed the window are reported (``SyncReport.missed``) and offered the weights
again by the learner's catch-up broadcasts while it waits for a batch.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Collection, Sequence
from typing import TypeVar

import msgspec
import torch.distributed as dist

from dynamo_async.weights.group import (
    LATEST_KEY,
    OFFER_KEY,
    PLAN_KEY,
    REPLY_KEY,
    SyncOffer,
    SyncPlan,
    SyncReply,
    encode_plan,
)

LAGGARD_WAIT_S = 0.25  # how long a laggard may take to reply once every other member has
POLL_S = 0.002  # the learner's poll interval for replies

T = TypeVar("T", SyncOffer, SyncPlan, SyncReply)


def token_matches(got: str, expected: str) -> bool:
    """Constant-time comparison of a plan's token with the Welcome's."""
    return hmac.compare_digest(got.encode(), expected.encode())


def read(store: dist.Store, key: str, kind: type[T]) -> T | None:
    """The message under ``key`` (which exists), or None if it does not decode as ``kind``."""
    try:
        return msgspec.msgpack.decode(store.get(key), type=kind)
    except msgspec.DecodeError:  # also ValidationError: a forged or corrupt value
        return None


def publish_offer(store: dist.Store, offer: SyncOffer) -> None:
    """Step 1: announce broadcast ``offer.plan``."""
    store.set(OFFER_KEY.format(offer.plan), msgspec.msgpack.encode(offer))
    store.set(LATEST_KEY, str(offer.plan))


def publish_plan(store: dist.Store, plan: SyncPlan) -> None:
    """Step 4: the members that joined; closes the window of offer ``plan.plan``."""
    store.set(PLAN_KEY.format(plan.plan), encode_plan(plan))


def collect_replies(
    store: dist.Store, plan: int, members: Sequence[str], laggards: Collection[str], join_timeout_s: float
) -> dict[str, SyncReply]:
    """Step 3: the replies to offer ``plan`` that arrived within the window (by member)."""
    start = time.monotonic()
    replies: dict[str, SyncReply] = {}
    pending = list(members)
    while pending:
        for member in list(pending):
            key = REPLY_KEY.format(plan, member)
            if store.check([key]):
                pending.remove(member)
                reply = read(store, key, SyncReply)
                if reply is not None:
                    replies[member] = reply
        waited = time.monotonic() - start
        regular = [m for m in pending if m not in laggards]
        if waited >= join_timeout_s or (not regular and waited >= min(LAGGARD_WAIT_S, join_timeout_s)):
            break
        if pending:
            time.sleep(POLL_S)
    return replies


def send_reply(store: dist.Store, plan: int, member: str, reply: SyncReply) -> None:
    """Step 2, a receiver's answer to offer ``plan``."""
    store.set(REPLY_KEY.format(plan, member), msgspec.msgpack.encode(reply))


def window_closed(store: dist.Store, plan: int) -> bool:
    """Whether the learner already wrote the plan of offer ``plan`` (too late to join it)."""
    return store.check([PLAN_KEY.format(plan)])


def await_plan(store: dist.Store, plan: int, timeout_s: float, halt: threading.Event, poll_s: float) -> bool:
    """A receiver that joined waits for the plan of offer ``plan``; False on timeout or ``halt``."""
    deadline = time.monotonic() + timeout_s
    while not window_closed(store, plan):
        if time.monotonic() >= deadline or halt.wait(poll_s):
            return False
    return True
