"""Flattened, dtype-grouped weight buckets: the wire format of a weight broadcast.

A ``Manifest`` lists every tensor (name, dtype, shape) and where its bytes lie: bucket index
and byte offset. Each bucket holds tensors of one dtype only and travels as one flat uint8
tensor, so any backend (gloo, NCCL) moves bf16 the same way as fp32, and a receiver slices
views out of the bucket without copying. Tensors go into buckets in the sender's fixed order
(FSDP ranks must iterate parameters identically); a tensor larger than the bucket size gets a
bucket of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import torch

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class TensorEntry(msgspec.Struct, frozen=True):
    name: str
    dtype: str
    shape: tuple[int, ...]
    bucket: int
    offset: int
    nbytes: int


class Manifest(msgspec.Struct, frozen=True):
    """What a broadcast carries; ``bucket_bytes[i]`` is the size of bucket ``i``."""

    version: int
    bucket_bytes: tuple[int, ...]
    entries: tuple[TensorEntry, ...]

    def bucket_entries(self, bucket: int) -> list[TensorEntry]:
        return [e for e in self.entries if e.bucket == bucket]


def plan_manifest(
    specs: Iterable[tuple[str, torch.dtype, Sequence[int]]], version: int, bucket_bytes: int = 256 << 20
) -> Manifest:
    """Assign (name, dtype, shape) specs, in order, to dtype-homogeneous buckets."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket size: got {bucket_bytes}, expected >= 1 byte")
    entries: list[TensorEntry] = []
    sizes: list[int] = []
    open_bucket: dict[str, int] = {}
    for name, dtype, shape in specs:
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name}: got dtype {dtype}, expected one of {sorted(DTYPES)}")
        dname = DTYPE_NAMES[dtype]
        nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        b = open_bucket.get(dname)
        if b is None or (sizes[b] + nbytes > bucket_bytes and sizes[b] > 0):
            b = len(sizes)
            sizes.append(0)
            open_bucket[dname] = b
        entries.append(TensorEntry(name, dname, tuple(int(s) for s in shape), b, sizes[b], nbytes))
        sizes[b] += nbytes
    return Manifest(version, tuple(sizes), tuple(entries))


def pack_bucket(
    manifest: Manifest,
    bucket: int,
    tensors: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The flat uint8 bucket ``bucket`` filled from ``tensors`` (by name), into ``out`` if given."""
    if out is None:
        out = torch.empty(manifest.bucket_bytes[bucket], dtype=torch.uint8, device=device)
    assert out.dtype == torch.uint8 and out.numel() == manifest.bucket_bytes[bucket]
    for e in manifest.bucket_entries(bucket):
        t = tensors[e.name].detach()
        assert DTYPE_NAMES[t.dtype] == e.dtype and tuple(t.shape) == e.shape, f"{e.name} changed shape or dtype"
        dest = out[e.offset : e.offset + e.nbytes]
        if t.is_contiguous() and t.data_ptr() == dest.data_ptr():
            continue  # the tensor already lives in this bucket (WeightSender.bind)
        dest.copy_(t.contiguous().reshape(-1).view(torch.uint8))
    return out


def unpack_bucket(manifest: Manifest, bucket: int, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of every tensor of bucket ``bucket`` inside ``flat`` (no copies)."""
    assert flat.dtype == torch.uint8 and flat.numel() == manifest.bucket_bytes[bucket]
    return {
        e.name: flat[e.offset : e.offset + e.nbytes].view(DTYPES[e.dtype]).reshape(e.shape)
        for e in manifest.bucket_entries(bucket)
    }


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
