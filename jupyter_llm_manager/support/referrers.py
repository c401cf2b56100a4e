"""Who still holds an object that should have been freed.

Walks ``gc.get_referrers`` a few steps back from the object and names the
places a notebook user can act on: a variable in the user namespace, the
output cache (``Out[3]``, ``_``), the last traceback, a running frame. Never
imports IPython; uses it only when it is already loaded.
"""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

__all__ = ["HOLDER_HINT", "describe_holders"]

HOLDER_HINT = ("Delete those references (del NAME; %reset -f out for the output cache; "
               "sys.last_traceback = sys.last_value = sys.last_exc = None for the last error), "
               "then run %llm gc.")
_MAX_DEPTH = 4
_MAX_NODES = 2000


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


def _last_error_frames() -> set[int]:
    frames = set()
    for name in ("last_traceback", "last_exc", "last_value"):
        value = getattr(sys, name, None)
        traceback = value.__traceback__ if isinstance(value, BaseException) else value
        while isinstance(traceback, types.TracebackType):
            frames.add(id(traceback.tb_frame))
            traceback = traceback.tb_next
    return frames


def describe_holders(target: Any) -> list[str]:
    """Readable names of what keeps ``target`` alive, closest first; empty when unknown."""
    namespaces = _user_namespaces()
    error_frames = _last_error_frames()
    found: list[str] = []
    frontier = [target]
    seen = {id(target), id(frontier), id(found)}
    depth = 0
    while frontier and depth < _MAX_DEPTH and len(seen) < _MAX_NODES:
        next_frontier = []
        for node in frontier:
            referrers = gc.get_referrers(node)
            seen.add(id(referrers))
            for holder in referrers:
                if id(holder) in seen or _is_own_frame(holder):
                    continue
                seen.add(id(holder))
                name = _name_of(holder, node, namespaces, error_frames)
                if name:
                    if name not in found:
                        found.append(name)
                elif not isinstance(holder, (types.ModuleType, type)):
                    next_frontier.append(holder)
            del referrers
        frontier = next_frontier
        depth += 1
    return found


def _is_own_frame(holder: Any) -> bool:
    return isinstance(holder, types.FrameType) and holder.f_code.co_filename == __file__


def _name_of(holder: Any, node: Any, namespaces: list[tuple[dict, dict | None]], error_frames: set[int]) -> str | None:
    for namespace, output_cache in namespaces:
        if holder is namespace:
            names = [k for k, v in namespace.items() if v is node and not k.startswith("__")]
            if names:
                return ", ".join(_variable_name(k) for k in names)
        if output_cache is not None and holder is output_cache:
            return ", ".join(f"Out[{k}]" for k, v in output_cache.items() if v is node) or None
    if isinstance(holder, types.FrameType):
        if id(holder) in error_frames:
            return "the last error's traceback (sys.last_traceback)"
        return f"a running frame of {holder.f_code.co_name}() in {holder.f_code.co_filename}:{holder.f_lineno}"
    return None


def _variable_name(key: str) -> str:
    if key in {"_", "__", "___"} or (key.startswith("_") and key[1:].isdigit()):
        return f"the output cache ({key})"
    return f"variable {key!r}"
