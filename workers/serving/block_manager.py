"""Paged KV block manager: which cache blocks each request owns. Plain ints, no torch.

The KV cache of a rank is `num_blocks` blocks of `block_size` token slots per layer. A request
(the "owner") holds a block table: its tokens' KV lives at slot `table[pos // block_size] *
block_size + pos % block_size` in every layer. Blocks are handed out from a free stack and come
back when the owner is freed; `check_invariants()` proves none leaked or doubled.
"""

from __future__ import annotations


class BlockManagerError(Exception):
    """Misuse of the block manager: unknown or duplicate owner, bad sizes."""


class OutOfBlocks(BlockManagerError):
    """Not enough free blocks; callers check `can_*` first, so this signals a scheduler bug."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0:
            raise BlockManagerError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise BlockManagerError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # A stack: the most recently freed block is reused first (warm in cache).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}

    # ---- queries ------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_owners(self) -> int:
        return len(self._tables)

    def owners(self) -> list[str]:
        return list(self._tables)

    def has(self, owner: str) -> bool:
        return owner in self._tables

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        if num_tokens < 0:
            raise BlockManagerError(f"num_tokens must be >= 0, got {num_tokens}")
        return -(-num_tokens // self.block_size)

    def block_table(self, owner: str) -> list[int]:
        return list(self._table(owner))

    def num_blocks_of(self, owner: str) -> int:
        return len(self._table(owner))

    def capacity_tokens(self, owner: str) -> int:
        return len(self._table(owner)) * self.block_size

    def can_allocate(self, num_tokens: int, reserve_blocks: int = 0) -> bool:
        """Whether a new owner of `num_tokens` tokens fits, leaving `reserve_blocks` free."""
        return self.blocks_for(num_tokens) + reserve_blocks <= len(self._free)

    def num_new_blocks(self, owner: str, total_tokens: int) -> int:
        """Blocks `owner` must add so its table holds `total_tokens` tokens."""
        return max(0, self.blocks_for(total_tokens) - len(self._table(owner)))

    def can_grow(self, owner: str, total_tokens: int) -> bool:
        return self.num_new_blocks(owner, total_tokens) <= len(self._free)

    # ---- changes ------------------------------------------------------------------------------
    def allocate(self, owner: str, num_tokens: int) -> list[int]:
        """Give a new owner blocks for `num_tokens` tokens; returns its block table."""
        if owner in self._tables:
            raise BlockManagerError(f"owner {owner!r} already holds {len(self._tables[owner])} blocks")
        need = self.blocks_for(num_tokens)
        if need > len(self._free):
            raise OutOfBlocks(
                f"{owner!r} needs {need} blocks for {num_tokens} tokens, {len(self._free)} free"
            )
        self._tables[owner] = [self._free.pop() for _ in range(need)]
        return list(self._tables[owner])

    def grow(self, owner: str, total_tokens: int) -> list[int]:
        """Extend `owner`'s table to hold `total_tokens` tokens; returns the blocks added."""
        table = self._table(owner)
        need = self.num_new_blocks(owner, total_tokens)
        if need > len(self._free):
            raise OutOfBlocks(
                f"{owner!r} needs {need} more blocks for {total_tokens} tokens, {len(self._free)} free"
            )
        added = [self._free.pop() for _ in range(need)]
        table.extend(added)
        return added

    def free(self, owner: str) -> int:
        """Return all of `owner`'s blocks; returns how many. Unknown owners are an error."""
        table = self._tables.pop(owner, None)
        if table is None:
            raise BlockManagerError(f"owner {owner!r} holds no blocks")
        self._free.extend(reversed(table))
        return len(table)

    def rename(self, owner: str, new_owner: str) -> None:
        """Hand `owner`'s blocks to `new_owner` (a finished prefill's blocks move to its KV lease)."""
        if new_owner in self._tables:
            raise BlockManagerError(
                f"owner {new_owner!r} already holds {len(self._tables[new_owner])} blocks"
            )
        self._tables[new_owner] = self._tables.pop(owner) if owner in self._tables else self._table(owner)

    # ---- slots --------------------------------------------------------------------------------
    def slot(self, owner: str, position: int) -> int:
        table = self._table(owner)
        index = position // self.block_size
        if position < 0 or index >= len(table):
            raise BlockManagerError(
                f"position {position} of {owner!r} is outside its {len(table) * self.block_size} slots"
            )
        return table[index] * self.block_size + position % self.block_size

    def slot_mapping(self, owner: str, start: int, end: int) -> list[int]:
        """Cache slots of positions [start, end) of `owner`."""
        table = self._table(owner)
        bs = self.block_size
        if start < 0 or end > len(table) * bs or start > end:
            raise BlockManagerError(
                f"positions [{start}, {end}) of {owner!r} are outside its {len(table) * bs} slots"
            )
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def check_invariants(self) -> None:
        """Every block is either free or owned by exactly one owner."""
        owned = [b for table in self._tables.values() for b in table]
        every = owned + self._free
        if len(every) != self.num_blocks or set(every) != set(range(self.num_blocks)):
            dup = len(every) - len(set(every))
            raise BlockManagerError(
                f"block accounting broken: {len(owned)} owned + {len(self._free)} free != "
                f"{self.num_blocks} blocks ({dup} duplicated)"
            )

    def _table(self, owner: str) -> list[int]:
        table = self._tables.get(owner)
        if table is None:
            raise BlockManagerError(f"owner {owner!r} holds no blocks")
        return table
