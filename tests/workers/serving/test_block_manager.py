"""The paged KV block manager on its own: allocate, grow, free, slots, and no leaks."""

from __future__ import annotations

import random

import pytest
from moeplane.workers.serving.block_manager import BlockManager, BlockManagerError, OutOfBlocks

pytestmark = pytest.mark.unit


def test_allocate_grow_free_round_trip() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    table = bm.allocate("a", 5)
    assert len(table) == 2 and bm.num_used_blocks == 2 and bm.num_free_blocks == 6
    assert bm.capacity_tokens("a") == 8
    assert bm.grow("a", 8) == []  # still fits
    added = bm.grow("a", 9)
    assert len(added) == 1 and bm.block_table("a") == table + added
    assert bm.free("a") == 3
    assert bm.num_used_blocks == 0
    bm.check_invariants()


def test_can_allocate_respects_reserve_and_capacity() -> None:
    bm = BlockManager(num_blocks=4, block_size=16)
    assert bm.can_allocate(64) and not bm.can_allocate(65)
    assert not bm.can_allocate(64, reserve_blocks=1)
    bm.allocate("a", 48)
    assert bm.can_grow("a", 64) and not bm.can_grow("a", 65)
    assert bm.num_new_blocks("a", 65) == 2


def test_out_of_blocks_and_misuse_are_errors() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    bm.allocate("a", 8)
    with pytest.raises(OutOfBlocks, match="needs 1 blocks for 1 tokens, 0 free"):
        bm.allocate("b", 1)
    with pytest.raises(OutOfBlocks):
        bm.grow("a", 9)
    with pytest.raises(BlockManagerError, match="already holds 2 blocks"):
        bm.allocate("a", 1)
    with pytest.raises(BlockManagerError, match="holds no blocks"):
        bm.free("zzz")
    with pytest.raises(BlockManagerError, match="num_blocks must be positive"):
        BlockManager(0, 4)
    bm.check_invariants()  # failed calls changed nothing
    assert bm.num_used_blocks == 2


def test_slot_mapping_follows_the_block_table() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    bm.allocate("x", 1)  # takes block 0
    table = bm.allocate("a", 10)
    slots = bm.slot_mapping("a", 0, 10)
    assert slots == [table[p // 4] * 4 + p % 4 for p in range(10)]
    assert bm.slot("a", 9) == slots[9]
    assert len(set(slots)) == 10 and not set(slots) & set(bm.slot_mapping("x", 0, 1))
    with pytest.raises(BlockManagerError, match="outside its 12 slots"):
        bm.slot_mapping("a", 0, 13)


def test_zero_tokens_owns_no_block() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    assert bm.allocate("a", 0) == []
    assert bm.has("a") and bm.free("a") == 0


def test_random_workload_never_leaks() -> None:
    rng = random.Random(0)
    bm = BlockManager(num_blocks=64, block_size=8)
    live: dict[str, int] = {}
    for step in range(3000):
        op = rng.random()
        if op < 0.4:
            n = rng.randint(0, 40)
            if bm.can_allocate(n):
                bm.allocate(f"r{step}", n)
                live[f"r{step}"] = n
        elif op < 0.8 and live:
            owner = rng.choice(sorted(live))
            target = live[owner] + rng.randint(1, 9)
            if bm.can_grow(owner, target):
                bm.grow(owner, target)
                live[owner] = target
        elif live:
            owner = rng.choice(sorted(live))
            assert bm.free(owner) == bm.blocks_for(live.pop(owner))
        assert bm.num_used_blocks == sum(bm.blocks_for(n) for n in live.values())
        if step % 100 == 0:
            bm.check_invariants()
    for owner in list(live):
        bm.free(owner)
    bm.check_invariants()
    assert bm.num_used_blocks == 0 and bm.num_owners == 0


def test_check_invariants_catches_a_leak() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate("a", 4)
    bm._free.append(bm._tables["a"][0])  # simulate a double free
    with pytest.raises(BlockManagerError, match="duplicated"):
        bm.check_invariants()
