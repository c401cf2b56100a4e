"""Editing a YAML document in place, so that a save keeps what the user wrote.

ruamel.yaml's round-trip parser keeps comments, key order, quoting, flow or
block style and blank lines. It only ever reads a text that
:func:`~.bounded_yaml.load_yaml` accepted first (size, nesting depth, alias
bombs, repeated keys), and only up to :data:`ROUND_TRIP_MAX_BYTES`: it is
pure Python, ten times slower than libyaml, so a larger file (tens of
thousands of models) is rewritten plainly, without its comments, with a warning.

Only what changes is touched: an entry equal to its new value keeps its
text; a changed mapping is updated key by key, new keys at its end; a value
written once and used again (``&anchor`` / ``*alias``) is replaced, never
edited through another name. YAML attaches the comments and blank lines
between two entries to the first one; they introduce what follows, so they
stay when that entry is removed, and stay at the end of a block an entry is
appended to.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedBase, CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.tokens import CommentToken

from .bounded_yaml import dump_yaml

__all__ = ["ROUND_TRIP_MAX_BYTES", "Document", "Same"]

log = logging.getLogger(__name__)

#: The largest file edited in place (its comments kept); a larger one is rewritten plainly.
ROUND_TRIP_MAX_BYTES = 1024 * 1024

#: Whether a value as written (``old``) already says what ``new`` says.
Same = Callable[[Any, Any], bool]

_DOCUMENT_START = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\r?\n)*---(?:[ \t\r\n]|\Z)")  # the file opens with ---
_KEY_ONLY = re.compile(r"^[^#\s-][^#]*:\s*(#.*)?$")  # "key:" (maybe with a comment): a block opens below


class _Yaml11(VersionedResolver):
    """YAML 1.1, as PyYAML reads it (``yes`` is true, ``0755`` octal), without writing a ``%YAML`` line.

    With ruamel.yaml's default (1.2), a new value ``"no"`` would be written
    unquoted and read back by PyYAML as false.
    """

    @property
    def processing_version(self) -> Any:
        return (1, 1)


class _Representer(RoundTripRepresenter):
    """Writes ``null`` for None, as our layout does (ruamel would leave the value empty)."""

    def represent_none(self, data: Any) -> Any:
        return self.represent_scalar("tag:yaml.org,2002:null", "null")


_Representer.add_representer(type(None), _Representer.represent_none)


def equal(old: Any, new: Any) -> bool:
    """Plain equality, where ``true`` and ``1`` differ."""
    return bool(old == new) and isinstance(old, bool) == isinstance(new, bool)


class Document:
    """One YAML document being edited: round trip (an existing file) or plain (a new one).

    ``order`` is the order of the top-level blocks of our layout: a block the
    file lacks is inserted where that order puts it.
    """

    def __init__(self, root: MutableMapping[str, Any], *, order: Iterable[str] = (), preamble: str = "",
                 yaml: YAML | None = None) -> None:
        self.root = root
        self.order = tuple(order)
        self._preamble = preamble
        self._yaml = yaml  # None: plain data, written by libyaml in our layout

    @classmethod
    def plain(cls, data: Mapping[str, Any] | None = None, *, order: Iterable[str] = ()) -> Document:
        """A document written plainly, in our layout: a new file, one converted from another layout, or a copy
        of ``data`` (values written once and used twice are copied apart, so editing one leaves the other)."""
        return cls(_copied(data) if data else {}, order=order)

    @classmethod
    def edit(cls, text: str, data: Any, *, order: Iterable[str] = ()) -> Document:
        """The document of ``text``, to be edited in place; ``data`` is what ``load_yaml(text)`` gave.

        ``text`` must have passed :func:`~.bounded_yaml.load_yaml`, whose checks ruamel.yaml does not make.
        """
        if data is not None and not isinstance(data, Mapping):
            raise ValueError("only a mapping at the top level can be edited")
        if not text.strip():
            return cls.plain(order=order)
        if len(text.encode("utf-8", "surrogatepass")) > ROUND_TRIP_MAX_BYTES:
            log.warning("the file is larger than %d KB: it is rewritten without its comments",
                        ROUND_TRIP_MAX_BYTES // 1024)
            return cls.plain(data, order=order)
        yaml = _round_trip_yaml(text)
        root = yaml.load(text)
        if root is None:  # only comments: they stay at the top
            kept = "".join(line for line in text.splitlines(keepends=True) if line.lstrip().startswith("#"))
            return cls(CommentedMap(), order=order, preamble=kept, yaml=yaml)
        return cls(root, order=order, yaml=yaml)

    @property
    def keeps_comments(self) -> bool:
        return self._yaml is not None

    def block(self, name: str) -> MutableMapping[str, Any] | None:
        """The top-level mapping ``name``, if the document has one (a non-mapping value is left alone)."""
        found = self.root.get(name)
        return found if isinstance(found, MutableMapping) else None

    def put(self, name: str, key: str, value: Any, *, same: Same = equal) -> None:
        """Set ``key`` in block ``name`` (created where our layout puts it) to ``value``, changing only what differs."""
        block = self.block(name)
        if block is None:
            self.set(name, {key: value})
            return
        if key in block:
            _assign(block, key, _updated(block[key], value, same))
        else:
            _append(block, key, _converted(value, block))

    def set(self, name: str, value: Any, *, same: Same = equal) -> None:
        """Make the top-level block ``name`` equal ``value``, changing only what differs."""
        if name in self.root:
            _assign(self.root, name, _updated(self.root[name], value, same))
            return
        position = self._position(name)
        converted = _converted(value, self.root)
        if position < len(self.root) and isinstance(self.root, CommentedMap):
            self.root.insert(position, name, converted)
        elif position < len(self.root):
            items = list(self.root.items())
            items.insert(position, (name, converted))
            self.root.clear()
            self.root.update(items)
        else:
            _append(self.root, name, converted)

    def drop(self, name: str, key: str | None = None) -> bool:
        """Remove ``key`` from block ``name`` (or the whole block); whether it was there."""
        container = self.root if key is None else self.block(name)
        target = name if key is None else key
        if container is None or target not in container:
            return False
        _drop(container, target)
        return True

    def drop_if_empty(self, name: str) -> None:
        """Remove block ``name`` when nothing is left in it."""
        if name in self.root and not self.root[name]:
            self.drop(name)

    def text(self) -> str:
        """The document as YAML text."""
        if self._yaml is None:
            return dump_yaml(self.root) if self.root else ""
        if not self.root:
            return self._preamble
        stream = io.StringIO()
        self._yaml.dump(self.root, stream)
        return self._preamble + stream.getvalue()

    def _position(self, name: str) -> int:
        """Where a new top-level block goes: after the blocks our layout puts before it."""
        if name not in self.order:
            return len(self.root)
        before = set(self.order[:self.order.index(name)])
        keys = list(self.root)
        return max((index + 1 for index, key in enumerate(keys) if key in before), default=0)


def _round_trip_yaml(text: str) -> YAML:
    """A round-trip parser and writer that indents as ``text`` does."""
    yaml = YAML(typ="rt", pure=True)
    yaml.Resolver = _Yaml11
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long value the user wrote on one line
    mapping, offset = _indents(text)
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    yaml.explicit_start = bool(_DOCUMENT_START.match(text))
    return yaml


def _indents(text: str) -> tuple[int, int]:
    """The mapping indent and the block sequence offset (spaces before ``-``) ``text`` uses; else 2 and 0."""
    mapping = offset = None
    opener: int | None = None  # the indentation of the previous line, when it opened a block
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if opener is not None and stripped.startswith("- ") and offset is None:
            offset = indent - opener
        elif opener is not None and indent > opener and mapping is None:
            mapping = indent - opener
        opener = indent if _KEY_ONLY.match(stripped) else None
        if mapping is not None and offset is not None:
            break
    mapping = mapping if mapping is not None and 1 < mapping <= 8 else 2
    offset = offset if offset is not None and 0 <= offset <= mapping else 0
    return mapping, offset


# -- changing values --------------------------------------------------------------------------

def _updated(old: Any, new: Any, same: Same) -> Any:
    """``old`` changed to say what ``new`` says: itself when it already does, edited key by key when it can."""
    if same(old, new):
        return old
    if isinstance(old, MutableMapping) and isinstance(new, Mapping) and not _shared(old):
        for key in [key for key in old if key not in new]:
            _drop(old, key)
        for key, value in new.items():
            if key in old:
                _assign(old, key, _updated(old[key], value, equal))
            else:
                _append(old, key, _converted(value, old))
        return old
    return _converted(new, old)


def _copied(value: Any) -> Any:
    """Plain containers copied all the way down (nesting is bounded by the loader)."""
    if isinstance(value, Mapping):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copied(item) for item in value]
    return value


def _assign(container: MutableMapping[str, Any], key: str, value: Any) -> None:
    if container[key] is not value:
        container[key] = value


def _shared(value: Any) -> bool:
    """Whether a value is written once and used elsewhere too (an anchor), or takes keys from one (``<<:``)."""
    if not isinstance(value, CommentedBase):
        return False
    return value.anchor.value is not None or bool(getattr(value, "merge", None))


def _converted(value: Any, near: Any) -> Any:
    """``value`` as the document beside ``near`` holds it: ruamel's containers in a round-trip document."""
    if not isinstance(near, CommentedBase):
        return value
    if isinstance(value, Mapping):
        return CommentedMap((key, _converted(item, near)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return CommentedSeq(_converted(item, near) for item in value)
    return value


def _append(container: MutableMapping[str, Any], key: str, value: Any) -> None:
    """Add ``key`` at the end; the comments and blank lines that ended the block still end it."""
    if not isinstance(container, CommentedMap):
        container[key] = value
        return
    if not container and container.fa.flow_style():
        container.fa.set_block_style()  # `{}` that now gets entries: written as a block, like ours
    trailing = ""
    if container and not container.fa.flow_style():
        trailing = _take_trailing(container, list(container)[-1])
    container[key] = value
    if trailing:
        _add_trailing(container, key, trailing)


def _drop(container: MutableMapping[str, Any], key: str) -> None:
    """Remove ``key``; the comments and blank lines after its entry stay where it was."""
    if not isinstance(container, CommentedMap) or container.fa.flow_style():
        del container[key]
        return
    keys = list(container)
    index = keys.index(key)
    trailing = _take_trailing(container, key)
    del container[key]
    container.ca.items.pop(key, None)
    if not trailing:
        return
    if index > 0:
        _add_trailing(container, keys[index - 1], trailing)
    elif len(keys) > 1:  # the first entry went: the lines come before the next one
        slots = container.ca.items.setdefault(keys[1], [None, None, None, None])
        slots[1] = [CommentToken(trailing, CommentMark(0)), *(slots[1] or [])]


# -- comments after an entry ---------------------------------------------------------------------

def _tail(container: Any, key: Any) -> tuple[Any, Any, int]:
    """Where the comment written after an entry is kept: (container, key or index, slot)."""
    value = container[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and value and not value.fa.flow_style():
        return _tail(value, list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
    return container, key, 0 if isinstance(container, CommentedSeq) else 2


def _take_trailing(container: CommentedMap, key: str) -> str:
    """Detach the lines after an entry's own end-of-line comment (blank lines, comments on their own lines)."""
    holder, where, slot = _tail(container, key)
    slots = holder.ca.items.get(where)
    token = slots[slot] if slots and len(slots) > slot else None
    if token is None:
        return ""
    own, newline, trailing = str(token.value).partition("\n")
    if own.strip():
        token.value = own + newline
    else:
        slots[slot] = None
    return trailing


def _add_trailing(container: CommentedMap, key: str, lines: str) -> None:
    """Put ``lines`` after an entry (after its own end-of-line comment, if it has one)."""
    holder, where, slot = _tail(container, key)
    slots = holder.ca.items.setdefault(where, [None, None, None, None])
    token = slots[slot]
    if token is None:
        slots[slot] = CommentToken("\n" + lines, CommentMark(0))
    else:
        text = str(token.value)
        token.value = text + ("" if text.endswith("\n") else "\n") + lines
