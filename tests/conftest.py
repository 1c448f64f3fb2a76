"""Shared test set-up: builtin models are built into a per-session cache, never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNAMO_ASYNC_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield


DAPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "dapo_math_17k.jsonl"
DAPO_ROWS = 40  # the first rows of DAPO-Math-17k, plus rows 35 and 179: one text, answers 64 and 6
DAPO_COPIES = 3  # each prompt repeated, as the hub's file repeats each about 100 times


def verl_rows(copies: int = DAPO_COPIES) -> list[dict]:
    """DAPO-Math-17k rows as the hub publishes them: verl's RL layout, DAPO's template around
    each problem, each prompt repeated ``copies`` times (interleaved, not adjacent)."""
    import json

    from dynamo_async.data.templates import DAPO as TEMPLATE

    with DAPO.open() as f:
        rows = [json.loads(line) for line in f]
    picked = rows[:DAPO_ROWS] + [rows[179]]
    out = []
    for _ in range(copies):
        for r in picked:
            out.append(
                {
                    "data_source": "math_dapo",
                    "ability": "MATH",
                    "prompt": [{"role": "user", "content": TEMPLATE.replace("{problem}", r["problem"])}],
                    "reward_model": {"style": "rule", "ground_truth": r["answer"]},
                    "extra_info": {"index": f"dapo-{r['id']}"},
                }
            )
    return out


@pytest.fixture(scope="session")
def verl_dapo_parquet(tmp_path_factory) -> Path:
    """A verl-layout Parquet file made from ``../shared/data/dapo_math_17k.jsonl`` (see ``verl_rows``)."""
    if not DAPO.exists():
        pytest.skip("needs ../shared/data/dapo_math_17k.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("verl") / "dapo-math-17k-verl.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows()), path)
    return path
