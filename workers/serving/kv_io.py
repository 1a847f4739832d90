"""Moving one request's KV between a paged cache and the canonical transfer payload.

The payload is layer-major: for each layer, the request's tokens in order, `kv_elems` elements
each, in the cache dtype, so prefill and decode ranks may use different block sizes. The prefill
side reads it straight out of its cache blocks (gathered one layer at a time as the stream
advances); the decode side receives into a staging buffer and scatters into its blocks only once
the whole transfer is verified, so a failed transfer never touches the cache.

Cache tensors: one per layer, [num_blocks, block_size, kv_elems]. Slots: [num_tokens] int64,
`block * block_size + offset` of each token (BlockManager.slot_mapping).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from moeplane.workers.kv.buffers import BufferSink, check_range
from moeplane.workers.kv.checksum import BytesLike
from moeplane.workers.kv.errors import TransferSizeMismatch
from moeplane.workers.kv.layout import KVDtype, KVLayout

_DTYPES = {
    torch.float32: KVDtype.FLOAT32,
    torch.bfloat16: KVDtype.BFLOAT16,
    torch.float16: KVDtype.FLOAT16,
    torch.float8_e4m3fn: KVDtype.FLOAT8_E4M3,
}


def kv_dtype(dtype: torch.dtype) -> KVDtype:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TransferSizeMismatch(f"KV cache dtype {dtype} cannot be transferred") from None


def layout_of(kv_cache: Sequence[torch.Tensor], num_tokens: int) -> KVLayout:
    first = kv_cache[0]
    return KVLayout(len(kv_cache), num_tokens, int(first.shape[-1]), kv_dtype(first.dtype))


def _as_bytes(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor's memory as a flat uint8 array (no copy)."""
    return t.contiguous().view(-1).view(torch.uint8).cpu().numpy()


class PagedKVSource:
    """Reads the payload of `slots` from a paged cache, one gathered layer at a time."""

    def __init__(self, kv_cache: Sequence[torch.Tensor], slots: torch.Tensor) -> None:
        self._cache = list(kv_cache)
        self._slots = slots.to(torch.int64).to(kv_cache[0].device)
        self.layout = layout_of(kv_cache, int(slots.numel()))
        self._layer = -1
        self._layer_bytes: np.ndarray | None = None

    @property
    def total_bytes(self) -> int:
        return self.layout.total_bytes

    def _gather(self, layer: int) -> np.ndarray:
        if layer != self._layer:
            cache = self._cache[layer]
            self._layer_bytes = _as_bytes(cache.view(-1, cache.shape[-1])[self._slots])
            self._layer = layer
        assert self._layer_bytes is not None
        return self._layer_bytes

    def read(self, offset: int, length: int) -> BytesLike:
        check_range(self.total_bytes, offset, length)
        per_layer = self.layout.layer_bytes
        pieces = []
        end = offset + length
        while offset < end:
            layer, start = divmod(offset, per_layer)
            take = min(end - offset, per_layer - start)
            pieces.append(memoryview(self._gather(layer).data)[start : start + take])
            offset += take
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def read_all(self) -> bytes:
        return bytes(self.read(0, self.total_bytes)) if self.total_bytes else b""


class PagedKVSink(BufferSink):
    """Receives the payload into a staging buffer; `commit()` scatters it into the cache."""

    def __init__(self, kv_cache: Sequence[torch.Tensor], slots: torch.Tensor) -> None:
        self._cache = list(kv_cache)
        self._slots = slots.to(torch.int64).to(kv_cache[0].device)
        self.layout = layout_of(kv_cache, int(slots.numel()))
        self._staging = torch.empty(self.layout.total_bytes, dtype=torch.uint8)
        super().__init__(memoryview(self._staging.numpy().data))

    def commit(self) -> None:
        """Write the verified payload into the cache slots of every layer."""
        lay = self.layout
        if not lay.total_bytes:
            return
        first = self._cache[0]
        data = self._staging.view(first.dtype).view(lay.num_layers, lay.num_tokens, lay.kv_elems)
        for layer, cache in enumerate(self._cache):
            cache.view(-1, lay.kv_elems).index_copy_(0, self._slots, data[layer].to(cache.device))
