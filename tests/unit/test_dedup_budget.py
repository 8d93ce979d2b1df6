"""The in-memory dedup store at its default size fits the README's memory budget."""

from __future__ import annotations

import tracemalloc
import uuid

from service.delivery.dedup import MemoryDedupStore
from service.delivery.redis_config import DedupConfig

# The README's budget is 150 MiB per process; five busy vendors peak near 120 MiB with a full
# store (bench), so the store may take at most about a sixth of it (~125 bytes an entry).
DEDUP_SHARE_MIB = 24


def test_a_full_default_size_memory_dedup_store_fits_its_share_of_the_memory_budget() -> None:
    """Filled to `dedup.max_entries` with UUID event ids over five vendors, the store's own
    allocations stay within its share of the per-process budget."""
    config = DedupConfig()
    vendors = ["sustain_impact", "sales_ninja", "expertsender", "altcraft", "conductrics"]
    tracemalloc.start()
    try:
        store = MemoryDedupStore(config.ttl_s, config.max_entries)
        for i in range(config.max_entries):  # the ids are held by the store: count them too
            store.add(vendors[i % len(vendors)], str(uuid.UUID(int=i)))
        used_mib = tracemalloc.get_traced_memory()[0] / 2**20
    finally:
        tracemalloc.stop()
    assert len(store) == config.max_entries
    assert used_mib <= DEDUP_SHARE_MIB, f"{used_mib:.0f} MiB for {config.max_entries} entries"
