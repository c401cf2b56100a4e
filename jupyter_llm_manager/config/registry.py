"""The names the manager knows: registered ids, their specs, aliases, pins and instance keys.

Pure bookkeeping: no loading, no events, no locks (the manager's lock guards
every call). Kept linear at any size: ids are indexed by instance key, and
aliases by the id they resolve to (rebuilt once after a change), so a status
of 10,000 ids does not look at every id per row. Each id also has a change
count (:meth:`Registry.change_of`) that moves when what the registry says of
that id moves (its spec, aliases, pin, or the other ids of its instance): a
status view rebuilds the rows of those ids only. Invariant: every alias
resolves, without a cycle, to exactly one registered id; ids that share an
:attr:`~ModelSpec.instance_key` share one loaded instance.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError, LLMManagerError, ModelNotFoundError
from .spec import ModelSpec
from .tasks import Task

__all__ = ["Registry"]


class Registry:
    """Ids, aliases and pins; plus what was removed since the last save."""

    def __init__(self) -> None:
        self.specs: dict[str, ModelSpec] = {}
        self.keys: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.pinned: set[str] = set()
        self.removed: set[str] = set()  # ids and aliases to drop from the file at the next save
        self.tasks: dict[str, Task] = {}  # tasks with options: each an alias of its selected option
        self.inference: dict[str, Any] = {}  # a task layout's inference block, saved back as read
        self._by_key: dict[str, dict[str, None]] = {}  # instance key -> its ids, in registration order
        self._aliases_by_id: dict[str, tuple[str, ...]] | None = None  # rebuilt after an alias changes
        self._aliases_seen: dict[str, tuple[str, ...]] = {}  # the index last built: a rebuild marks what moved
        self._changes = 0
        self._changed: dict[str, int] = {}  # id -> the count at the last change of what the registry says of it

    # -- models -------------------------------------------------------------------------

    def put(self, spec: ModelSpec) -> None:
        """Register (or replace) a model; an alias of the same name gives way."""
        self._drop_alias(spec.id)
        old = self.keys.get(spec.id)
        if old is not None:
            self._unindex(spec.id, old)
            self._mark(self._by_key.get(old, ()))  # their instance's priority and protection may move
        self.specs[spec.id] = spec
        self.keys[spec.id] = spec.instance_key
        self._by_key.setdefault(spec.instance_key, {})[spec.id] = None
        if spec.pinned:
            self.pinned.add(spec.id)
        self.removed.discard(spec.id)
        self._mark(self._by_key[spec.instance_key])

    def key_left_behind(self, model_id: str, new: ModelSpec) -> str | None:
        """The instance key ``model_id`` stops using when ``new`` replaces its spec, if no other id uses it."""
        old = self.keys.get(model_id)
        if old is None or old == new.instance_key or self.shared(old, besides=model_id):
            return None
        return old

    def shared(self, key: str, *, besides: str) -> bool:
        return any(other != besides for other in self._by_key.get(key, ()))

    def remove(self, name: str) -> str | None:
        """Forget an alias (aliases of it then point where it pointed), or a model and its aliases; returns the
        instance key no id uses any more."""
        if name in self.aliases:
            target = self.aliases[name]
            for other in [a for a, points in self.aliases.items() if points == name]:
                self.point(other, target)  # an alias of this alias keeps naming what it named
            self._drop_alias(name)
            self.removed.add(name)
            return None
        model_id = self.resolve(name)
        key = self.keys[model_id]
        for alias in self.aliases_of(model_id):
            self._drop_alias(alias)
        del self.specs[model_id], self.keys[model_id]
        self._unindex(model_id, key)
        self.pinned.discard(model_id)
        self.removed.add(model_id)
        self._changed.pop(model_id, None)
        self._mark(self._by_key.get(key, ()))
        return None if self.shared(key, besides=model_id) else key

    def pin(self, model_id: str, pinned: bool) -> None:
        """Pin or unpin a registered id."""
        (self.pinned.add if pinned else self.pinned.discard)(model_id)
        self._mark((model_id,))

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, name: str, target: str, *, overwrite: bool) -> None:
        """Make ``name`` another name of ``target``; refused, changing nothing, when it would break the invariant."""
        if name in self.specs:
            raise ConfigurationError(f"{name!r} is a registered model, not an alias", model_id=name)
        if name in self.aliases and not overwrite and self.aliases[name] != target:
            raise ConfigurationError(f"alias {name!r} already points to {self.aliases[name]!r}; "
                                     "pass overwrite=True to change it", model_id=name)
        self.resolve(target)
        previous = self.aliases.get(name)
        self.point(name, target)
        try:
            self.resolve(name)
        except ConfigurationError:
            if previous is None:
                self._drop_alias(name)
            else:
                self.point(name, previous)
            raise
        self.removed.discard(name)

    def point(self, name: str, target: str) -> None:
        """Make the alias ``name`` point at ``target``, unchecked (callers check; a file's aliases at once)."""
        self.aliases[name] = target
        self._aliases_by_id = None

    def _drop_alias(self, name: str) -> None:
        if self.aliases.pop(name, None) is not None:
            self._aliases_by_id = None

    def resolve(self, name: str) -> str:
        """The registered id an id or alias names."""
        chain = [name]
        current = name
        while current in self.aliases:
            current = self.aliases[current]
            if current in chain:
                raise ConfigurationError("alias cycle: " + " → ".join([*chain, current]), model_id=name)
            chain.append(current)
        if current not in self.specs:
            if current != name:
                raise ConfigurationError(f"alias {name!r} points to {current!r}, which is not registered",
                                         model_id=name)
            raise ModelNotFoundError(name, self.close_matches(name))
        return current

    def resolve_quiet(self, name: str) -> str | None:
        try:
            return self.resolve(name)
        except LLMManagerError:
            return None

    def close_matches(self, name: str) -> list[str]:
        known = self.names()
        same_case = [k for k in known if k.lower() == name.lower()]
        return same_case or difflib.get_close_matches(name, known, n=3, cutoff=0.5)

    def names(self) -> list[str]:
        """Registered ids, then aliases."""
        return [*self.specs, *self.aliases]

    def aliases_of(self, model_id: str) -> tuple[str, ...]:
        """The aliases that resolve to ``model_id``, directly or through other aliases."""
        index = self._aliases_by_id
        if index is None:
            index = self._index_aliases()
        return index.get(model_id, ())

    def _index_aliases(self) -> dict[str, tuple[str, ...]]:
        """Rebuild the aliases of each id; the ids whose aliases moved since the last build are marked changed."""
        found: dict[str, list[str]] = {}
        for alias in self.aliases:
            target = self.resolve_quiet(alias)
            if target is not None:
                found.setdefault(target, []).append(alias)
        index = {target: tuple(names) for target, names in found.items()}
        seen = self._aliases_seen
        self._mark([target for target in seen.keys() | index.keys() if seen.get(target) != index.get(target)])
        self._aliases_by_id = self._aliases_seen = index
        return index

    # -- what changed ---------------------------------------------------------------------

    def change_of(self, model_id: str) -> int:
        """A count that moves whenever what the registry says of ``model_id`` moves: its spec, its aliases, its
        pin, the other ids of its instance (their priority and protection are its instance's). A status row is
        kept while it stays (one registration rebuilds one row, not every row)."""
        if self._aliases_by_id is None:
            self._index_aliases()
        return self._changed.get(model_id, 0)

    def _mark(self, ids: Iterable[str]) -> None:
        self._changes += 1
        for model_id in ids:
            self._changed[model_id] = self._changes

    # -- what an instance's ids say together ------------------------------------------------

    def ids_of(self, key: str) -> list[str]:
        return list(self._by_key.get(key, ()))

    def _unindex(self, model_id: str, key: str) -> None:
        ids = self._by_key.get(key)
        if ids is not None:
            ids.pop(model_id, None)
            if not ids:
                del self._by_key[key]

    def is_pinned(self, key: str) -> bool:
        return any(model_id in self.pinned for model_id in self.ids_of(key))

    def priority(self, key: str) -> int:
        """The highest priority any id of the instance has (its own or its kind's)."""
        ids = self._by_key.get(key, ())
        if len(ids) == 1:  # most instances have one id: no generator (10,000 status rows ask)
            for model_id in ids:
                return self.specs[model_id].effective_priority
        return max((self.specs[i].effective_priority for i in ids), default=0)

    def is_protected(self, key: str) -> bool:
        """Whether any id of the instance is protected (explicitly, or by its kind)."""
        ids = self._by_key.get(key, ())
        if len(ids) == 1:
            for model_id in ids:
                return self.specs[model_id].effective_protected
        return any(self.specs[i].effective_protected for i in ids)

    def keep_alive(self, key: str) -> float | None:
        """The shortest keep-alive the instance's ids set themselves, or None to use the manager's."""
        own = [seconds for i in self.ids_of(key) if (seconds := self.specs[i].keep_alive) is not None]
        return min(own) if own else None
