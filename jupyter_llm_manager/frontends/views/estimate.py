"""A memory estimate (``manager.estimate()``) as one table: ``%llm estimate`` and the CLI's ``estimate``."""

from __future__ import annotations

from ...reports import MemoryEstimate
from .table import Column, Table

__all__ = ["estimate_table"]


def estimate_table(model_id: str, estimate: MemoryEstimate) -> Table:
    """The parts (weights, KV cache, overhead), each with how it was obtained, then the total."""
    rows = [["weights", estimate.weights_str, estimate.weights_method],
            ["KV cache", estimate.kv_cache_str, estimate.kv_cache_method],
            ["overhead", estimate.overhead_str, estimate.overhead_method],
            ["total", estimate.total_str, ""]]
    return Table([Column("part"), Column("bytes"), Column("how")], rows, caption=f"Estimate for {model_id}",
                 notes=[estimate.parameters_str] if estimate.parameters else [])
