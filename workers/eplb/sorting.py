"""Sorts for the balancer's hot paths, on numpy where torch's CPU sort is several times slower.

Each function returns exactly what its torch counterpart would (the docstrings name it), so
swapping them in changes no placement. Inputs are CPU tensors, as `rebalance` makes them.
"""

from __future__ import annotations

import numpy
import torch


def sorted_desc(w: torch.Tensor) -> torch.Tensor:
    """`w.sort(dim=-1, descending=True).values` for [D, n] float CPU tensors (numpy's sort)."""
    if w.device.type != "cpu":
        return w.sort(dim=-1, descending=True).values
    # copy(): a fresh C-ordered array (a reversed view, even of one column, has a negative stride).
    return torch.from_numpy(numpy.sort(w.detach().numpy(), axis=-1)[..., ::-1].copy())


def argsort_desc(w: torch.Tensor) -> torch.Tensor:
    """`torch.argsort(w, dim=-1, descending=True, stable=True)` for [D, n] float CPU tensors.

    numpy's quicksort (unstable, several times faster than torch's sort on the CPU) orders the
    values; where equal values remain, one more sort of (value rank, index) keys, unique and
    exact in int64, puts ties in index order as the stable sort does.
    """
    num_domains, num_items = w.shape
    if w.device.type != "cpu" or num_items == 0:
        return torch.argsort(w, dim=-1, descending=True, stable=True)
    negated = -w.detach().numpy()
    order = numpy.argsort(negated, axis=-1)
    v = numpy.sort(negated, axis=-1)  # the values in `order`'s order (cheaper than a gather)
    new_value = v[:, 1:] != v[:, :-1]
    if bool(new_value.all()):
        return torch.from_numpy(order)
    rank = numpy.zeros((num_domains, num_items), dtype=numpy.int64)
    numpy.cumsum(new_value, axis=-1, out=rank[:, 1:])
    keys = numpy.sort(rank * num_items + order, axis=-1)
    return torch.from_numpy(keys % num_items)


def sorted_replicas(weight: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`packing.expand_replicas` for our policy, the same result: the experts are sorted (E per
    domain, not n replicas) and then repeated, with numpy's sort and repeat.

    (The baselines keep `expand_replicas`, so that their timing stays as it was.)

    Args:
        weight: [D, E] float64 loads; counts: [D, E] int64 (>= 1), the same sum n per domain.
    Returns:
        ids: [D, n] int64; w: [D, n] float64, heaviest first (ties: lower expert id first).
    """
    if weight.device.type != "cpu":
        weight, counts = weight.cpu(), counts.cpu()
    num_domains = counts.shape[0]
    per_replica = weight / counts
    order = argsort_desc(per_replica)
    sorted_w = per_replica.gather(1, order)
    if counts.shape[1] == int(counts[0].sum()):  # one replica each (counts are >= 1)
        return order, sorted_w
    reps = counts.gather(1, order).numpy().ravel()
    ids = numpy.repeat(order.numpy().ravel(), reps).reshape(num_domains, -1)
    w = numpy.repeat(sorted_w.numpy().ravel(), reps).reshape(num_domains, -1)
    return torch.from_numpy(ids), torch.from_numpy(w)
