"""What a model can be asked: text (chat mode) or vectors (embed mode), checked before anything loads.

A model registered with ``mode: embed`` answers :meth:`LLMManager.embed`
only; a chat model answers ``generate`` and ``stream`` only. Asking the
wrong one is a clear error at once, without loading the model.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config.spec import ModelSpec
from ..errors import GenerationError, InvalidGenerationParameters

__all__ = ["MAX_TEXTS", "checked_texts", "text_model"]

#: The most texts one ``embed`` call takes (split larger batches).
MAX_TEXTS = 4096


def text_model(spec: ModelSpec) -> ModelSpec:
    """``spec``, when its model generates text; else a :class:`GenerationError` saying what it is."""
    if spec.backend == "loader":
        raise GenerationError(f"{spec.id!r} is a model of kind {spec.kind!r} loaded by {spec.loader}: it has no "
                              f"text interface; use it directly: with manager.use({spec.id!r}) as m: m.model(...)",
                              model_id=spec.id)
    if spec.mode == "embed":
        raise GenerationError(f"{spec.id!r} is an embedding model (mode: embed): it makes vectors, not text; "
                              f"use manager.embed({spec.id!r}, texts), or register the file again with "
                              "mode: chat under another id", model_id=spec.id)
    return spec


def checked_texts(spec: ModelSpec, texts: str | Sequence[str]) -> list[str]:
    """The texts of an ``embed`` call as a list (one string is one text), for an embed-mode model."""
    if spec.backend == "loader":
        text_model(spec)  # says what it is
    if spec.mode != "embed":
        raise GenerationError(f"{spec.id!r} is a chat model (mode: {spec.mode}): it has no embeddings; register "
                              "an embedding model with mode: embed (the same file may be registered twice)",
                              model_id=spec.id)
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InvalidGenerationParameters(f"texts is a string or a list of strings, got {type(texts).__name__}",
                                          model_id=spec.id)
    if len(texts) > MAX_TEXTS:
        raise InvalidGenerationParameters(f"{len(texts)} texts in one call; at most {MAX_TEXTS}: split them",
                                          model_id=spec.id)
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidGenerationParameters(f"text {index} must be a non-empty string, got {text!r:.60}",
                                              model_id=spec.id)
    return list(texts)
