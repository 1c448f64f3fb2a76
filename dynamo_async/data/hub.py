"""Problems from a Hugging Face dataset, ``owner/name[:split]`` (needs the ``datasets`` package).

The split is the one after ``:``, else the dataset's only split, else ``train`` for training
data and ``test`` for held-out data. Rows are read like a local file's (``problems.convert_rows``),
one at a time. A dataset that cannot be found or reached (no network, no local ``datasets``
cache) is an error that says how to pass a local copy instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dynamo_async.errors import UsageError

if TYPE_CHECKING:
    from dynamo_async.data.problems import Located, ReadOptions


def iter_hub_problems(spec: str, field: str, opts: ReadOptions) -> Iterator[Located]:
    from dynamo_async.data.problems import convert_rows

    name, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"{field}: got {spec!r}, which is not a local file; loading a Hugging Face "
            "dataset needs `pip install datasets` (or save it as JSONL/Parquet and pass the "
            "path)"
        ) from None
    local_copy = (
        f"on a machine without network, download it elsewhere (e.g. `huggingface-cli download {name} "
        f"--repo-type dataset --local-dir DIR`), copy its Parquet/JSONL file here and pass the path: "
        f"{field}=DIR/FILE.parquet"
    )
    not_found = getattr(getattr(datasets, "exceptions", None), "DatasetNotFoundError", None) or ()
    try:
        split = split or _default_split(datasets, name, field)
        rows = datasets.load_dataset(name, split=split)
    except not_found as err:  # a FileNotFoundError: before the OSError below
        raise UsageError(
            f"{field}: got {spec!r}, which is neither a local file nor a Hugging Face dataset that "
            f"could be found ({str(err)[:200]}); check the name, or, {local_copy}"
        ) from None
    except (ConnectionError, OSError) as err:  # no network and no local cache
        raise UsageError(
            f"{field}: got {spec!r}, a Hugging Face dataset that could not be reached "
            f"({type(err).__name__}: {str(err)[:200]}); {local_copy}"
        ) from None
    yield from convert_rows(
        ((f"split {split!r}, row {i}", i, dict(row)) for i, row in enumerate(rows)), name.replace("/", "_"), name, opts
    )


def _default_split(datasets, name: str, field: str) -> str:
    splits = list(datasets.get_dataset_split_names(name))
    if len(splits) == 1:
        return splits[0]
    preferred = "train" if field == "data.train" else "test"
    if preferred in splits:
        return preferred
    raise UsageError(f"{field}: dataset {name!r} has splits {splits}, expected one of them named as {name}:SPLIT")
