"""A model's memory estimate, by part, and how each part was obtained (made by :mod:`..estimates`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..support.units import bytes_text, format_bytes

__all__ = ["MemoryEstimate"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory a model needs, by part, and how each part was obtained."""

    model_id: str
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    weights_method: str
    kv_cache_method: str
    overhead_method: str
    parameters: int | None = None
    known: bool = True
    adapter_bytes: int | None = None  # a LoRA adapter's own weights, counted in ``weights_bytes``

    weights_str = bytes_text("weights_bytes")
    kv_cache_str = bytes_text("kv_cache_bytes")
    overhead_str = bytes_text("overhead_bytes")

    @property
    def parameters_str(self) -> str:
        """``7.24 B parameters``, ``494.0 M parameters``; empty when unknown."""
        if not self.parameters:
            return ""
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if self.parameters >= size:
                return f"{self.parameters / size:.{2 if unit == 'B' else 1}f} {unit} parameters"
        return f"{self.parameters} parameters"

    @property
    def total_str(self) -> str:
        return format_bytes(self.total_bytes) if self.known else "unknown"

    def __str__(self) -> str:
        return (f"{self.model_id}: {self.total_str} = weights {self.weights_str} ({self.weights_method})"
                f" + KV cache {self.kv_cache_str} ({self.kv_cache_method})"
                f" + overhead {self.overhead_str} ({self.overhead_method})")
