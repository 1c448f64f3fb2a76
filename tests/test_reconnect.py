"""A restarted learner and the workers of its earlier start: the buffer id in Welcome and
WorkRequest, NoWork "reconnect", and the worker loop's rejoin."""

from __future__ import annotations

from types import SimpleNamespace

from test_buffer_loopback import make_service

from buffer.client import BufferClient
from buffer.server import BufferServer
from dynamo_async.protocol import NoWork, WorkGrant
from workers.worker import RolloutWorker


def test_a_request_welcomed_by_an_earlier_start_is_told_to_reconnect():
    with BufferServer(make_service()) as server:
        client = BufferClient("127.0.0.1", server.endpoints.work, None, "w0", timeout_s=5)
        welcome = client.hello("hf", 4)
        assert welcome.buffer_id == server.buffer_id and client.buffer_id == server.buffer_id
        assert isinstance(client.request_work(4, 0), WorkGrant)
        client.buffer_id = "an-earlier-start"
        reply = client.request_work(4, 0)
        assert isinstance(reply, NoWork) and reply.reason == "reconnect"
        client.reset()
        client.hello("hf", 4)  # hello again: served as before
        assert isinstance(client.request_work(4, 0), WorkGrant)
        client.close()
    with BufferServer(make_service()) as other:
        assert other.buffer_id != server.buffer_id  # each start has its own id


class _Client:
    """Answers "reconnect" once, then "shutdown"."""

    worker_id = "w0"

    def __init__(self):
        self.replies = [NoWork(reason="reconnect", retry_after_s=0.0), NoWork(reason="shutdown", retry_after_s=0.0)]

    def request_work(self, capacity, version):
        return self.replies.pop(0)


def _worker(rejoin) -> RolloutWorker:
    engine = SimpleNamespace(policy_version=3)
    worker = RolloutWorker(SimpleNamespace(), _Client(), engine, None, None, 4, rejoin)
    worker._unsent[7] = 2
    worker.held_leases = (7,)
    unscored = SimpleNamespace(done=lambda: False)  # a completion still being scored
    worker.pending.append(SimpleNamespace(future=unscored))
    return worker


def test_the_worker_drops_the_old_learners_work_and_rejoins():
    calls = []
    worker = _worker(lambda: calls.append("rejoined") or "rejoined")
    assert worker.run() == 0
    assert calls == ["rejoined"] and not worker.pending and worker.held_leases == () and not worker._unsent


def test_a_slow_learner_keeps_the_workers_work():
    """A timeout whose hello finds the same learner ("same") drops nothing."""
    worker = _worker(lambda: "same")
    seen = []

    def request_work(capacity, version):
        if not seen:
            seen.append(None)
            raise TimeoutError("no answer")
        seen.append((len(worker.pending), worker.held_leases))
        worker.pending.clear()  # let the loop end without scoring the fake completion
        return NoWork(reason="shutdown", retry_after_s=0.0)

    worker.client.request_work = request_work
    worker.run()
    assert seen[1] == (1, (7,))  # after the rejoin its pending work and lease are still its own


def test_a_worker_that_cannot_rejoin_stops():
    worker = _worker(None)
    worker.rejoin = lambda: worker.pending.clear()  # gives up (None); nothing left to score
    worker.run()
    assert worker.client.replies  # stopped at the reconnect, never asked again
