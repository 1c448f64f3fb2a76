"""Shared test set-up: builtin models are built into a per-session cache, never the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNAMO_ASYNC_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield
