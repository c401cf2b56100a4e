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
    unmeasured_bytes: int = 0  # a part of the total no measurement reports (llama.cpp's contexts and sampler)
    correction: float | None = None  # the learned factor applied: the median measured/estimated of past loads
    correction_method: str = ""  # which loads it was learned from
    uncorrected_bytes: int | None = None  # the total from metadata alone, when a correction changed it

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
        """``245.5 MB``; with a learned correction ``270.1 MB (245.5 MB from metadata, corrected × 1.10)``."""
        if not self.known:
            return "unknown"
        if self.correction is None or self.uncorrected_bytes is None:
            return format_bytes(self.total_bytes)
        return (f"{format_bytes(self.total_bytes)} ({format_bytes(self.uncorrected_bytes)} from metadata, "
                f"corrected × {self.correction:.2f})")

    @property
    def correction_str(self) -> str:
        """What the learned correction is and where it comes from; empty when none applies."""
        return f"correction {self.correction_method}" if self.correction is not None else ""

    def __str__(self) -> str:
        parts = (f"{self.model_id}: {self.total_str} = weights {self.weights_str} ({self.weights_method})"
                 f" + KV cache {self.kv_cache_str} ({self.kv_cache_method})"
                 f" + overhead {self.overhead_str} ({self.overhead_method})")
        return f"{parts}; {self.correction_str}" if self.correction is not None else parts
