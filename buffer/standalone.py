"""The buffer service on its own (``dynamo-async buffer``): no learner, no weight sync.

Workers connect as they would to a learner; generation fills the buffer up to the staleness
gate (the version never advances without a learner). For testing workers and the network,
and for inspecting allocation on a real prompt set. Stops on Ctrl-C, SIGTERM or SIGHUP, saving the
statistics into RUN_DIR/buffer and closing the Arrow store.
"""

from __future__ import annotations

from pathlib import Path

from buffer.server import BufferServer
from buffer.service import BufferService
from buffer.store import RunStore
from dynamo_async.config.schema import RunConfig
from dynamo_async.signals import stop_on_signals


def serve(cfg: RunConfig, run_dir: Path, host: str, port: int, keys=None) -> int:
    from dynamo_async.data.prompts import pool_prompts, training_problems
    from dynamo_async.models import load_tokenizer

    prompts = pool_prompts(training_problems(cfg.data), load_tokenizer(cfg.model.name), cfg)
    stop = stop_on_signals()  # SIGTERM, SIGINT, SIGHUP
    with RunStore(run_dir, cfg.buffer.segment_bytes, cfg.buffer.flush_rows) as store:
        service = BufferService(cfg, prompts, store, vocab_size=None)  # no model here: ids checked >= 0 only
        with BufferServer(service, host, port, keys=keys) as server:
            print(f"buffer serving {len(prompts)} prompts: {server.endpoints}", flush=True)
            while not stop.wait(1.0):
                pass
        service.close()
        service.save_state(run_dir / "buffer")
    print(f"buffer stopped; statistics saved in {run_dir / 'buffer'}", flush=True)
    return 0
