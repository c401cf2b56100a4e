"""A llama.cpp model the manager unloaded: its memory is freed, and using it is a Python error, not a crash.

``Llama.close()`` frees llama.cpp's model and context at once, whatever
still references the Python object: a notebook that kept ``m = lease.model``
from a ``use()`` block holds an object whose native pointers are gone, and
calling it (``m.create_completion(...)``) crashed the kernel. So the closed
object's class becomes ``UnloadedLlama``, a subclass of its own (made per class) whose
public attributes raise :class:`~jupyter_llm_manager.errors.ModelUnloadedError`
naming the model and how to use it again. Private attributes and ``close``
stay as they were, so llama-cpp-python's own ``__del__`` still runs.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from ...errors import ModelUnloadedError

__all__ = ["remember", "retire"]

log = logging.getLogger(__name__)

_ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # each loaded Llama -> its model id
_classes: dict[type, type] = {}  # each Llama class -> its unloaded subclass


def remember(model: Any, model_id: str) -> None:
    """Note the id ``model`` was loaded for: the error of a later use names it."""
    _ids[model] = model_id


def retire(model: Any) -> None:
    """Free ``model``'s memory now (``close()``) and make every later public use raise, not crash."""
    model_id = _ids.pop(model, None)
    model.close()
    try:
        model.__dict__["_llm_manager_id"] = model_id
        model.__class__ = _unloaded_class(type(model))
    except (TypeError, AttributeError) as error:  # a class that cannot be swapped: it was closed all the same
        log.debug("could not mark the unloaded llama.cpp model: %s", error)


def _unloaded_class(cls: type) -> type:
    found = _classes.get(cls)
    if found is None:
        found = _classes[cls] = type("UnloadedLlama", (cls,), {
            "__getattribute__": _refused, "__repr__": _repr, "__module__": __name__,
            "__doc__": "A llama.cpp model the LLM manager unloaded: its memory is freed; using it raises."})
    return found


def _refused(self: Any, name: str) -> Any:
    if name.startswith("_") or name == "close":
        return object.__getattribute__(self, name)
    model_id = object.__getattribute__(self, "__dict__").get("_llm_manager_id")
    how = f"manager.use({model_id!r})" if model_id else "manager.use(...)"
    raise ModelUnloadedError(f"this model{f' ({model_id!r})' if model_id else ''} was unloaded by the LLM manager "
                             f"(its memory is freed, so .{name} cannot run); use it again through {how}")


def _repr(self: Any) -> str:
    model_id = object.__getattribute__(self, "__dict__").get("_llm_manager_id")
    return f"<llama_cpp.Llama {model_id or ''} unloaded by the LLM manager>"
