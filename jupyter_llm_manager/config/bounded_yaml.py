"""Reading and writing YAML safely, at a bounded cost, whatever the file holds.

A configuration file is edited by hand and may be hostile. Before anything is
built from it:

- its size is bounded (:data:`MAX_FILE_BYTES`), and its nesting depth is
  measured on the parser's event stream (no recursion), so the recursive
  composer never sees a file nested deeper than :data:`MAX_DEPTH`;
- the node graph is walked once, each distinct node once, to count the
  values it would expand to: aliases share nodes, so an "alias bomb" of a few
  hundred bytes that would expand to billions of values is refused here, in
  linear time, before it is built (:data:`MAX_VALUES`); recursive aliases are
  refused too;
- a key written twice in one mapping is an error naming both lines (YAML
  would keep the last silently).

Only YAML's safe tags are built. libyaml's C loader and dumper are used when
PyYAML has them (the same safety, ~10x faster on large files).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_VALUES", "YamlProblem", "dump_yaml", "load_yaml"]

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 1_000_000

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class YamlProblem(ValueError):
    """Why a YAML text was refused, and on which line (1-based) when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def load_yaml(text: str, *, pure_python: bool = False) -> Any:
    """The plain data (dicts, lists, scalars) of one YAML document, or :class:`YamlProblem`.

    ``pure_python`` uses PyYAML's Python loader even where libyaml's is available (for comparisons).
    """
    loader_class = yaml.SafeLoader if pure_python else _Loader
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise YamlProblem(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; a configuration file "
                          "is a few KB")
    try:
        _check_depth(text, loader_class)
        loader = loader_class(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise YamlProblem(f"invalid YAML: {error.problem or error.context or 'unreadable'}",
                          mark.line + 1 if mark else None) from None
    except yaml.YAMLError as error:
        raise YamlProblem(f"invalid YAML: {error}") from None


def dump_yaml(document: Any, *, pure_python: bool = False) -> str:
    """YAML text for plain data, keys in the given order, block style."""
    dumper = yaml.SafeDumper if pure_python else _Dumper
    return str(yaml.dump(document, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True))


def _check_depth(text: str, loader_class: type) -> None:
    """Refuse deep nesting from the event stream, which the parsers produce without recursion."""
    depth = 0
    for event in yaml.parse(text, Loader=loader_class):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else None
                raise YamlProblem(f"the file nests deeper than {MAX_DEPTH} levels; a configuration file needs "
                                  "a handful", line)
        elif isinstance(event, _CLOSE):
            depth -= 1


def _check_nodes(root: yaml.Node) -> None:
    """Count the values the document expands to (each distinct node once), and find repeated keys."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            active.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_VALUES:
                raise YamlProblem(
                    f"the file expands to more than {MAX_VALUES:,} values through its aliases (*name); it was "
                    "refused before being built (an alias bomb?)", node.start_mark.line + 1)
            continue
        if id(node) in active:
            raise YamlProblem("an alias refers to the collection it is part of (a recursive alias)",
                              node.start_mark.line + 1)
        active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            _check_keys(node)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line, identity = key.start_mark.line + 1, (key.tag, key.value)
        if identity in seen:
            shown = key.value if len(key.value) <= 60 else key.value[:57] + "..."
            raise YamlProblem(f"the key {shown!r} appears twice in one mapping (lines {seen[identity]} and {line}); "
                              "YAML would silently keep the second: remove one", line)
        seen[identity] = line
