"""Tasks with options (a ``tasks:`` configuration): which option each task names now, and switching.

A task is an alias that points at one of its options. Selecting another
option re-points it; the option it leaves is unloaded once idle, unless
something else still names it (an alias, the default model, another id of
the same weights, a pin).
"""

from __future__ import annotations

from ..config.tasks import Task, option_id
from ..errors import ConfigurationError
from ..events import EventBus
from .state import ManagerState

__all__ = ["TaskSelection"]


class TaskSelection:
    """The tasks of one manager, and selecting their options."""

    def __init__(self, state: ManagerState, bus: EventBus) -> None:
        self._state = state
        self._bus = bus

    def select(self, task: str, option: str) -> str | None:
        """Point ``task`` at its ``option``; returns the instance key of the option it leaves, if nothing else uses it.

        Whatever else names the previous option (an alias, the default model,
        another id of the same weights, a pin) keeps it loaded.
        """
        state = self._state
        with state.lock:
            registry = state.registry
            found = registry.tasks.get(task)
            if found is None:
                known = ", ".join(sorted(registry.tasks)) or "none (a tasks: section in the configuration file adds them)"
                raise ConfigurationError(f"{task!r} is not a task; tasks: {known}", model_id=task)
            if option not in found.options:
                raise ConfigurationError(f"task {task!r} has no option {option!r}; its options: "
                                         f"{', '.join(found.options)}", model_id=task, key=option)
            new, old = option_id(task, option), registry.aliases.get(task)
            registry.point(task, new)
            registry.removed.discard(task)
            state.retiring.discard(registry.keys[new])
            leaving = None
            if old and old != new and old in registry.specs and not self._still_used(old):
                leaving = registry.keys[old]
                state.retiring.add(leaving)
            state.touch(everyone=True)
        self._bus.emit("registered", task, message=f"alias of {new} (option {option!r} selected)")
        return leaving

    def _still_used(self, model_id: str) -> bool:
        registry = self._state.registry
        default = self._state.settings.default_model
        return (bool(registry.aliases_of(model_id)) or model_id in registry.pinned
                or registry.shared(registry.keys[model_id], besides=model_id)
                or (default is not None and registry.resolve_quiet(default) == model_id))

    def tasks(self) -> list[str]:
        state = self._state
        with state.lock:
            return list(state.registry.tasks)

    def task(self, name: str) -> Task:
        state = self._state
        with state.lock:
            found = state.registry.tasks.get(name)
        if found is None:
            raise ConfigurationError(f"{name!r} is not a task; tasks: {', '.join(self.tasks()) or 'none'}")
        return found
