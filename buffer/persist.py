"""The buffer's part of a checkpoint (``RUN_DIR/checkpoints/step-N/buffer/``):

    prompt_stats.parquet   per-prompt Bernoulli statistics (k_i, G_i, last version tried)
    buffer_state.json      step, version, groups consumed, draw position (epoch, index),
                           next group id, the prompts of groups not yet consumed, and the
                           row count of each store table (``buffer/history.py``)

A restored buffer continues the same prompt order and draws the not-yet-consumed prompts
first (their groups are generated again, under new group ids: in-flight work is not kept).
Rows the store got after the checkpoint are marked superseded. Both functions are called with
the service's lock held.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pyarrow.parquet as pq

from buffer.history import supersede


class SavedState(msgspec.Struct, frozen=True):
    step: int
    version: int
    consumed: int
    epoch: int
    position: int
    next_group: int
    requeue: tuple[str, ...]
    store_rows: dict[str, int] = {}  # raw rows per store table at the checkpoint (older ones: none)


def save_state(service, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(service.pool.stats_table(), directory / "prompt_stats.parquet")
    # not consumed, or planned and not yet admitted: generate again
    live = tuple(g.prompt_id for g in service.groups.values()) + tuple(service.planner.planned_prompt_ids())
    rows = service.store.checkpoint_rows() if service.store is not None else {}
    state = SavedState(
        service.step,
        service.version,
        service.counts["consumed"],
        *service.pool.position,
        service._next_group,
        live,
        rows,
    )
    (directory / "buffer_state.json").write_bytes(msgspec.json.encode(state))


def restore_state(service, directory: Path) -> None:
    state = msgspec.json.decode((directory / "buffer_state.json").read_bytes(), type=SavedState)
    service.pool.restore_stats(pq.read_table(directory / "prompt_stats.parquet"))
    service.step, service.version = state.step, state.version
    service.counts["consumed"] = state.consumed
    service.pool.seek(state.epoch, state.position)
    service.pool.requeue_first(state.requeue)
    service._next_group = state.next_group
    if service.store is not None:  # one history: rows written after the checkpoint are superseded
        if state.store_rows:
            supersede(service.store.run_dir, state.step, state.store_rows, service.store.base_rows)
        service._next_group = max(state.next_group, service.store.next_group_id)
