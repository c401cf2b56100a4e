"""Built-in demo models: tiny real checkpoints in the user's cache, built offline.

``demo-small`` and ``demo-large`` are Llama-style checkpoints with random
weights and a small trained tokenizer. They load through the normal path, so a
newcomer can watch loading, aliases, eviction and streaming before
downloading anything. Their answers are noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..support.paths import cache_folder
from .tiny import LARGE, SMALL, build_tiny_model

__all__ = ["DEMO_MODELS", "NOISE_NOTE", "build_demo_models", "is_demo", "register_demo_models"]

DEMO_MODELS = {"demo-small": SMALL, "demo-large": LARGE}
NOISE_NOTE = ("The demo models have random weights: their answers are noise. Ask the built-in smollm2 for a "
              "real answer (%%llm smollm2), or register your own model, e.g. %llm register qwen "
              "Qwen/Qwen2.5-0.5B-Instruct (it needs the Hub or a local copy).")


def build_demo_models(folder: Path | None = None) -> dict[str, Path]:
    """Build (once) and return the demo checkpoints; seconds, no network."""
    root = folder or cache_folder() / "demo-models"
    return {model_id: build_tiny_model(root / model_id, shape) for model_id, shape in DEMO_MODELS.items()}


def is_demo(model_id: str) -> bool:
    return model_id in DEMO_MODELS


class Registers(Protocol):
    """What the demo models are registered with: a manager."""

    def register(self, model_id: str, source: str | None = None, **options: Any) -> object: ...


def register_demo_models(manager: Registers, folder: Path | None = None) -> list[str]:
    """Register the demo models (marked built-in: never saved to the configuration file)."""
    for model_id, path in build_demo_models(folder).items():
        manager.register(model_id, source=str(path), builtin=True, overwrite=True)
    return list(DEMO_MODELS)
