"""The learner process: hosts the buffer, serves workers, and runs the step as named steps.

    pull batch -> prepare tensors -> proximal pass -> mini-batch updates -> version += 1
               -> broadcast weights -> the gate opens for the new version -> metrics
               -> a few decoded samples (metrics.log_samples) -> checkpoint when due

While it waits for a batch, the learner sends the current weights to workers that joined
since the last broadcast (a late joiner first receives the current weights and version).
Runtime facts (bound ports, the device) live in ``LearnerContext``, never in the config.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from buffer import history
from buffer.batch import LearnerBatch
from buffer.curve import ServerKeys
from buffer.server import BufferServer
from buffer.service import BufferService
from buffer.store import RunStore
from dynamo_async.config import config_to_yaml
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.learner import checkpoint, heldout
from dynamo_async.learner.distributed import DistInfo
from dynamo_async.learner.metrics import MetricsLog
from dynamo_async.learner.orders import Evaluate, Step, send_order
from dynamo_async.learner.samples import sample_rows, tokenizer_decode
from dynamo_async.learner.sinks import StatusSink, make_sinks
from dynamo_async.learner.step import learner_step
from dynamo_async.learner.trainer import Trainer
from dynamo_async.protocol import Hello, Welcome
from dynamo_async.weights.group import sync_backend
from dynamo_async.weights.sender import WeightSender


@dataclass(frozen=True)
class LearnerContext:
    """Where this learner runs (never written into the config)."""

    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    advertise: str | None = None
    device: str = "cpu"
    show_progress: bool = True
    keys: ServerKeys | None = None  # CURVE on the buffer's sockets (buffer/curve.py)


class Learner:
    def __init__(self, cfg: RunConfig, ctx: LearnerContext, resume: bool = False, dist_info: DistInfo = DistInfo()):
        from dynamo_async.data.prompts import load_training_set, pool_prompts

        self.cfg, self.ctx = cfg, ctx
        ckpt = checkpoint.latest_checkpoint(ctx.run_dir) if resume else None
        if resume and ckpt is None:
            raise UsageError(
                f"--resume: got run directory {ctx.run_dir} without a checkpoint, expected "
                f"one written by an earlier run (RUN_DIR/checkpoints/latest); delete it and start again"
            )
        self.dist = dist_info
        self.trainer = Trainer(cfg, ctx.device, ckpt, dist_info)
        if ckpt is not None:  # one history: the killed run's metrics after the checkpoint go
            history.cut_metrics(ctx.run_dir, self.trainer.step)
        self.store = RunStore(ctx.run_dir, cfg.buffer.segment_bytes, cfg.buffer.flush_rows)
        problems, self.data_report = load_training_set(cfg.data)
        write_data_summary(ctx.run_dir, cfg.data.train, len(problems), self.data_report)
        prompts = pool_prompts(problems, self.trainer.tokenizer, cfg)
        # Token ids must be below the model's vocab_size (its logits width and embedding rows), not
        # len(tokenizer): workers sample from those logits and the learner indexes that embedding.
        # Padded embeddings make it the larger of the two; tokens added without resizing make it the
        # smaller, and then the larger would let in ids the learner cannot index (docs/design.md section 6).
        self.service = BufferService(
            cfg, prompts, self.store, vocab_size=self.trainer.model.config.get_text_config().vocab_size
        )
        if ckpt is not None:
            self.service.restore_state(ckpt / "buffer")
        backend = sync_backend(ctx.device)
        self.sender = WeightSender(
            ctx.host,
            0,
            backend=backend,
            device=ctx.device,
            token=secrets.token_hex(16),  # this start's; workers get it in the Welcome only
            timeout_s=cfg.weights.timeout_s,
            join_timeout_s=cfg.weights.join_timeout_s,
        )
        if not dist_info.sharded:
            self.sender.bind(dict(self.trainer.model.named_parameters()))  # parameters live in the buckets
        # Sharded: the full weights of the last step, gathered by every rank (follower.py does the
        # same at start), so a worker joining before the first step gets the resumed weights.
        self._weights = self.trainer.named_weights() if dist_info.sharded else None
        self.server = BufferServer(self.service, ctx.host, ctx.port, welcome=self._welcome, keys=ctx.keys)
        self._sent_to: tuple[str, ...] = ()
        self.last_sync = None
        self._stop = None
        self._worker_idle = 0.0
        self.last_samples: list[dict] = []  # the decoded samples of the last step (keep_samples)
        self._saved_at = time.monotonic()  # the start, then each checkpoint (trainer.checkpoint_every_s)

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def version(self) -> int:
        return self.trainer.version

    # ------------------------------------------------------------------ process

    @property
    def endpoints(self):
        return self.server.endpoints

    def start(self) -> Learner:
        self.server.start()
        return self

    def run(self, steps: int | None = None, stop=None) -> None:
        """Run until ``trainer.total_steps`` (or ``steps`` more, or ``stop`` is set); checkpoint at
        the end. Held-out evaluations run before and after when ``trainer.eval_samples`` > 0."""
        end = self.cfg.trainer.total_steps if steps is None else self.step + steps
        config = msgspec.to_builtins(self.cfg)
        sinks = make_sinks(
            self.cfg.metrics, self.ctx.run_dir, config, self.step, rewind=history.rewinds(self.ctx.run_dir, self.step)
        )
        sinks.append(StatusSink(self.service, self.step))
        log = MetricsLog(self.ctx.run_dir, self.cfg.trainer.total_steps, self.step, self.ctx.show_progress, sinks)
        every = self.cfg.trainer.eval_every
        try:
            if self.step == 0:
                self.evaluate(log, "before")
            self._stop = stop
            while self.step < end and not self._stopping():
                metrics = self.train_step()
                if metrics is None:  # stopped while waiting for a batch
                    break
                log.write(metrics)
                log.write_samples(self.last_samples)
                if every and self.step % every == 0 and self.step < end:
                    self.evaluate(log, f"step {self.step}")
            if self.step >= end:  # a stopped run checkpoints without it
                self.evaluate(log, "after")
        finally:
            log.close()
            if self.dist.sharded:
                send_order(None)  # the other ranks stop and write their part of the final checkpoint
        self.save()

    def evaluate(self, log: MetricsLog, label: str) -> dict:
        """Sampled accuracy of the current weights on the held-out sets, on every learner rank
        (``heldout.py``); logged here."""
        if not self.cfg.trainer.eval_samples:
            return {}
        if self.dist.sharded:
            send_order(Evaluate())
        results = heldout.evaluate(self.trainer)
        n = self.cfg.trainer.eval_samples
        # The learner samples with its own model (the hf engine), whatever rollout.engine is:
        # the same weights, temperature and scorer; docs/launching.md
        sampler = "" if self.cfg.rollout.engine == "hf" else ", sampled by the learner's transformers model"
        for name, res in results.items():
            log.note(f"held-out accuracy {label} ({name}, {n} samples each{sampler}): {res}")
        out = {f"eval/{name}": res.accuracy for name, res in results.items()}
        log.write_eval({"step": self.step, "version": self.version, "label": label, **out})
        return out

    def close(self, grace_s: float = 10.0) -> None:
        """Tell workers to stop (they get "shutdown" at their next request), wait up to
        ``grace_s`` for them to say goodbye, then close the sockets and the store."""
        self.service.close()
        deadline = time.monotonic() + grace_s
        while self.service.live_workers() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.server.stop()
        self.store.close()

    def save(self) -> Path:
        """Write a checkpoint of this step (a collective with the other ranks when sharded: each
        writes its shards) and keep the newest ``keep_checkpoints``."""
        path = checkpoint.save_checkpoint(self.ctx.run_dir, self.trainer, self.service)
        assert path is not None, "rank 0 writes the checkpoint's folder"
        checkpoint.prune_checkpoints(self.ctx.run_dir, self.cfg.trainer.keep_checkpoints)
        self._saved_at = time.monotonic()
        return path

    def _checkpoint_by_time(self) -> bool:
        every = self.cfg.trainer.checkpoint_every_s
        return bool(every) and time.monotonic() - self._saved_at >= every

    # ------------------------------------------------------------------ the step

    def train_step(self) -> dict | None:
        t0 = time.perf_counter()
        batch = self.pull_batch()
        if batch is None:
            return None
        t_pulled = time.perf_counter()
        by_time = self._checkpoint_by_time()  # decided here, once, so every rank agrees
        if self.dist.sharded:
            send_order(Step(batch, by_time))
        result = learner_step(self.trainer, batch, by_time)  # what every rank runs
        self._weights = result.weights
        self.broadcast(force=True)
        # Only now may the gate admit groups for the new version: a group admitted before the
        # workers have its weights would be generated with old ones and dropped as too stale.
        self.service.set_version(self.version)
        metrics = result.metrics
        metrics.update(self.batch_metrics(batch))
        metrics.update(
            step=self.step,
            version=self.version,
            learner_idle_s=t_pulled - t0,
            step_s=time.perf_counter() - t0,
            sync_s=self.last_sync.seconds if self.last_sync else None,
            sync_error=self.last_sync.error if self.last_sync else None,
        )
        metrics["tokens_per_s"] = metrics["response_tokens"] / max(metrics["step_s"], 1e-9)
        idle = self.service.worker_idle_seconds()  # reported by heartbeats, summed over workers
        metrics["worker_idle_s"], self._worker_idle = idle - self._worker_idle, idle
        self.last_samples = self.keep_samples(batch)
        if result.checkpoint:
            self.save()
        return metrics

    def keep_samples(self, batch: LearnerBatch) -> list[dict]:
        """A few decoded samples of the step (``metrics.log_samples``, ``samples.py``), written
        to the store's samples table now (before a checkpoint counts its rows); ``run`` hands
        them to the metric sinks with the step's figures."""
        rows = sample_rows(batch, self.cfg.metrics.log_samples, tokenizer_decode(self.trainer.tokenizer))
        self.store.append_samples(rows)
        return rows

    def pull_batch(self) -> LearnerBatch | None:
        """Wait for a full batch (None if told to stop); meanwhile bring newly joined workers up
        to date."""
        while not self._stopping():
            batch = self.service.pull_batch(timeout=1.0)
            if batch is not None:
                return batch
            self.broadcast(force=False)
        return None

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def broadcast(self, force: bool) -> None:
        """Send the weights: to every live receiver after an update (``force``), otherwise to
        those that do not have this version yet (newcomers, and members that missed the join
        window of an earlier broadcast: ``weights.join_timeout_s``, docs/design.md section 7)."""
        members = tuple(self.service.live_receivers())
        if not members or (not force and set(members) <= set(self._sent_to)):
            return
        if self.version == 0 and not force:  # newcomers loaded the same initial weights
            self._sent_to = members
            return
        have = () if force else tuple(m for m in self._sent_to if m in members)
        targets = tuple(m for m in members if m not in have)
        weights = self._weights if self.dist.sharded else self.trainer.named_weights()
        self.last_sync = report = self.sender.broadcast(weights, self.version, targets)
        got = report.current + (report.members if report.error is None else ())
        self._sent_to = tuple(sorted({*have, *got}))  # a member that missed the window is not in it

    # ------------------------------------------------------------------ helpers

    def batch_metrics(self, batch: LearnerBatch) -> dict:
        accs = [s.acc for g in batch.groups for s in g.samples]
        rewards = [s.reward for g in batch.groups for s in g.samples]
        sizes = Counter(len(g.samples) for g in batch.groups)
        return {
            "accuracy": float(np.mean(accs)),
            "reward": float(np.mean(rewards)),
            "groups": len(batch.groups),
            "samples": len(accs),
            "effective_samples": sum(len(g.samples) for g in batch.groups if not g.zero_variance),
            "zero_variance_frac": float(np.mean([g.zero_variance for g in batch.groups])),
            "allocation_hist": {str(k): v for k, v in sorted(sizes.items())},
            "staleness_mean": float(np.mean(batch.staleness)),
            "staleness_max": int(max(batch.staleness)),
            "dropped_stale": batch.dropped_stale,
            "dropped_zero_variance": batch.dropped_zero_variance,
            "response_tokens": int(sum(s.num_tokens for g in batch.groups for s in g.samples)),
            "workers": len(self._sent_to),
        }

    def _welcome(self, hello: Hello) -> Welcome:
        return Welcome(
            worker_id=hello.worker_id,
            config_yaml=config_to_yaml(self.cfg),
            sync_host=self._advertised(),
            sync_port=self.sender.port,
            policy_version=self.version,
            sync_token=self.sender.token,
        )

    def _advertised(self) -> str:
        if self.ctx.advertise:
            return self.ctx.advertise
        if self.ctx.host not in ("0.0.0.0", ""):
            return self.ctx.host
        return socket.gethostbyname(socket.gethostname())


def write_data_summary(run_dir: Path, train: str, prompts: int, report) -> None:
    """``RUN_DIR/data.json``: the training set's source, its prompt count and what dedup did."""
    summary = {"train": train, "prompts": prompts, "dedup": msgspec.to_builtins(report) if report else None}
    (Path(run_dir) / "data.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
