"""Who still holds an object that should have been freed, found within a time budget.

Names the places a notebook user can act on: a variable in the user
namespace (or an attribute or item of one), the output cache (``Out[3]``,
``_``), the last traceback, a running frame. The direct places are looked at
first, cheaply (the namespaces and the frames, not the whole heap); only
when they name nothing, and the heap is small enough to walk within the
budget, does it ask the garbage collector who refers to the object
(``gc.get_referrers`` walks every object). Past the budget it says nothing
rather than stall an unload. Never imports IPython; uses it only when it is
already loaded. Never runs the object's own code (no attribute lookups
through ``__getattr__``): a mock or a proxy is looked at like any object.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import types
from typing import Any

__all__ = ["HOLDER_HINT", "SOMETHING", "describe_holders"]

HOLDER_HINT = ("Delete those references (del NAME; %reset -f out for the output cache; "
               "sys.last_traceback = sys.last_value = sys.last_exc = None for the last error), "
               "then run %llm gc.")
#: What holds an object when nothing could be named within the budget.
SOMETHING = "something this kernel could not name in time (run %llm gc to look again)"
_BUDGET_S = 0.1
_INNER_ITEMS = 20_000  # items of the namespaces' containers looked into, at most
_MAX_SCANS = 3  # gc.get_referrers walks of the whole heap, at most


def describe_holders(target: Any, *, budget: float = _BUDGET_S, scan: bool = True) -> list[str]:
    """Readable names of what keeps ``target`` alive, closest first; empty when none was found in ``budget`` s.

    ``scan=False``: never walk the whole heap (the caller knows it is large).
    """
    deadline = time.monotonic() + budget
    namespaces = _user_namespaces()
    found = _direct(target, namespaces)
    if not found and scan:
        found = _scanned(target, namespaces, deadline)
    return list(dict.fromkeys(found))


def _user_namespaces() -> list[tuple[dict, dict | None]]:
    """(user namespace, output cache) of the running IPython, else ``__main__``."""
    spaces: list[tuple[dict, dict | None]] = []
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module else None
    if shell is not None:
        spaces.append((shell.user_ns, getattr(shell.history_manager, "output_hist", None)))
    main = sys.modules.get("__main__")
    if main is not None and all(main.__dict__ is not ns for ns, _ in spaces):
        spaces.append((main.__dict__, None))
    return spaces


def _direct(target: Any, namespaces: list[tuple[dict, dict | None]]) -> list[str]:
    """The user's variables (and what is directly inside them), the output cache, the last error's frames and
    other threads' running frames, without walking the heap.

    A frame's locals are looked at through what the frame refers to (``gc.get_referents``), never through
    ``f_locals``, which would copy them into a dict the frame keeps (and the model with them).
    """
    found: list[str] = []
    budget = [_INNER_ITEMS]
    for namespace, output_cache in namespaces:
        for key, value in list(namespace.items()):
            if key.startswith("__"):
                continue
            if value is target:
                found.append(_variable_name(key))
            elif _contains(value, target, budget):
                found.append(f"{_variable_name(key)} (inside it)")
        if output_cache is not None:
            found += [f"Out[{k}]" for k, v in list(output_cache.items()) if v is target]
    for error_frame in _last_error_frames():
        if _refers(error_frame, target):
            found.append("the last error's traceback (sys.last_traceback)")
            break
    found += _running_frames_holding(target)
    return found


def _running_frames_holding(target: Any) -> list[str]:
    """Other threads' running frames that hold ``target`` in a local.

    The frames are dropped before returning: ``sys._current_frames()`` makes
    frame objects, and one of this thread's, kept in a local, would hold its
    own locals (and ``target``) in a cycle only a collection breaks.
    """
    found: list[str] = []
    me = threading.get_ident()
    frames = sys._current_frames()
    try:
        for ident in list(frames):
            frame: types.FrameType | None = frames[ident] if ident != me else None
            while frame is not None:
                if frame.f_code.co_filename != __file__ and _refers(frame, target):
                    found.append(_frame_name(frame))
                frame = frame.f_back
    finally:
        frames.clear()
    return found


def _refers(frame: types.FrameType, target: Any) -> bool:
    return any(value is target for value in gc.get_referents(frame))


def _contains(value: Any, target: Any, budget: list[int]) -> bool:
    """Whether a container, or an object's own attributes, hold ``target`` directly (bounded by ``budget``)."""
    if type(value) in (list, tuple, set, frozenset):
        items: Any = value
    elif type(value) is dict:
        items = value.values()
    else:
        try:
            own = object.__getattribute__(value, "__dict__")
        except (AttributeError, TypeError):
            return False
        if type(own) is not dict:
            return False
        items = own.values()
    for item in items:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        if item is target:
            return True
    return False


def _scanned(target: Any, namespaces: list[tuple[dict, dict | None]], deadline: float) -> list[str]:
    """Ask the garbage collector who refers to ``target``, a few steps back, while the budget lasts."""
    error_frames = {id(frame) for frame in _last_error_frames()}
    found: list[str] = []
    frontier = [target]
    seen = {id(target), id(frontier), id(found)}
    for _ in range(_MAX_SCANS):
        started = time.monotonic()
        if not frontier or started >= deadline:
            break
        referrers = gc.get_referrers(*frontier)
        seen.add(id(referrers))
        next_frontier = []
        for holder in referrers:
            if id(holder) in seen or _is_own_frame(holder):
                continue
            seen.add(id(holder))
            name = _name_of(holder, {id(node) for node in frontier}, namespaces, error_frames)
            if name:
                found.append(name)
            elif not isinstance(holder, (types.ModuleType, type)):
                next_frontier.append(holder)
        del referrers
        if found or time.monotonic() + (time.monotonic() - started) > deadline:
            break  # the next walk would not end within the budget
        frontier = next_frontier[:200]
    return found


def _last_error_frames() -> list[types.FrameType]:
    frames = []
    for name in ("last_traceback", "last_exc", "last_value"):
        value = getattr(sys, name, None)
        traceback = value.__traceback__ if isinstance(value, BaseException) else value
        while isinstance(traceback, types.TracebackType):
            frames.append(traceback.tb_frame)
            traceback = traceback.tb_next
    return frames


def _is_own_frame(holder: Any) -> bool:
    return isinstance(holder, types.FrameType) and holder.f_code.co_filename == __file__


def _name_of(holder: Any, held: set[int], namespaces: list[tuple[dict, dict | None]],
             error_frames: set[int]) -> str | None:
    """The name a user knows ``holder`` by, as the holder of one of the objects ``held`` (their ids)."""
    for namespace, output_cache in namespaces:
        if holder is namespace:
            keys = [k for k, v in list(namespace.items()) if id(v) in held and not k.startswith("__")]
            return ", ".join(f"{_variable_name(k)} (inside it)" for k in keys) or None
        if output_cache is not None and holder is output_cache:
            return ", ".join(f"Out[{k}] (inside it)" for k, v in list(output_cache.items()) if id(v) in held) or None
    if isinstance(holder, types.FrameType):
        if id(holder) in error_frames:
            return "the last error's traceback (sys.last_traceback)"
        return _frame_name(holder)
    return None


def _frame_name(frame: types.FrameType) -> str:
    return f"a running frame of {frame.f_code.co_name}() in {frame.f_code.co_filename}:{frame.f_lineno}"


def _variable_name(key: str) -> str:
    if key in {"_", "__", "___"} or (key.startswith("_") and key[1:].isdigit()):
        return f"the output cache ({key})"
    return f"variable {key!r}"
