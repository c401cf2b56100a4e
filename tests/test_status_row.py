"""``StatusRow.of``: the row the dataclass makes, without its per-field cost (the first status() of many ids)."""

from __future__ import annotations

import dataclasses

import pytest

from jupyter_llm_manager.reports import StatusRow

REQUIRED = {"id": "a", "instance": "k", "aliases": ("b",), "backend": "transformers", "device": "cpu",
            "state": "registered", "in_use": 0, "pinned": False, "priority": 0, "estimated_bytes": None,
            "actual_bytes": None, "last_used": None, "expires_at": None, "error": None}


@pytest.mark.parametrize("extra", [{}, {"generation": {"temperature": 0}, "base": "x", "held_by": ("m",)},
                                   {"details": {"n": 1}, "context": 512, "lent_to": ("nb.ipynb",)}])
def test_of_makes_the_row_the_dataclass_makes(extra):
    made, fast = StatusRow(**REQUIRED, **extra), StatusRow.of(**REQUIRED, **extra)
    assert fast == made and vars(fast) == vars(made) and type(fast) is StatusRow
    assert repr(fast) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.state = "loaded"  # type: ignore[misc]


def test_defaults_made_by_a_factory_are_not_shared_between_rows():
    first, second = StatusRow.of(**REQUIRED), StatusRow.of(**REQUIRED)
    assert first.details == {} and first.details is not second.details
    assert first.generation is not second.generation


@pytest.mark.parametrize("change", [{"id": None}, {"colour": "red"}])
def test_a_missing_or_unknown_field_is_refused_as_the_dataclass_refuses_it(change):
    values = {**REQUIRED, **change}
    values = {name: value for name, value in values.items() if value is not None}
    with pytest.raises(TypeError):
        StatusRow(**values)
    with pytest.raises(TypeError, match="colour|id"):
        StatusRow.of(**values)
