"""The prompt interpolation rule: values in, code and JSON untouched, never an error."""

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from jupyter_llm_manager.frontends.notebook.interpolate import interpolate

NS = {"name": "Ada", "xs": [1, 2, 3], "d": {"k": "v", "a b": 1}, "x": 3.14159, "In": ["", "print(1)"],
      "Out": {2: 42}, "text": "abcdefgh", "_": "last", "obj": type("O", (), {"attr": "A", "n": None})()}


@pytest.mark.parametrize("template, expected", [
    ("Hi {name}!", "Hi Ada!"),
    ("{xs[0]} {xs[-1]} {d[k]} {d['k']} {d[\"k\"]}", "1 3 v v v"),
    ("{x:.2f} {name!r} {text[:3]} {text[-2:]} {obj.attr}", "3.14 'Ada' abc gh A"),
    ("{In[1]} -> {Out[2]}; last: {_}", "print(1) -> 42; last: last"),
    ("{{name}} and {{ literal }}", "{name} and { literal }"),
    ('json {"a": {"b": [1, 2]}}', 'json {"a": {"b": [1, 2]}}'),
    ("d = {x: 1, 'y': 2}", "d = {x: 1, 'y': 2}"),
    ("def f(): return {}", "def f(): return {}"),
    ("{unknown} {xs[9]} {d[missing]} {obj.nope} {name.__class__}", "{unknown} {xs[9]} {d[missing]} {obj.nope} {name.__class__}"),
    ("C: int m[2][2] = {{1,2},{3,4}};", "C: int m[2][2] = {{1,2},{3,4}};"),
    ("{x:bad spec} {name:>10s}", "{x:bad spec} " + "Ada".rjust(10)),
    ("unbalanced { and } and {{ and }}", "unbalanced { and } and { and }"),
    ("closing }} without opening", "closing }} without opening"),
])
def test_the_rule(template, expected):
    assert interpolate(template, NS) == expected


@given(st.text())
def test_never_raises_and_text_without_braces_is_unchanged(text):
    result = interpolate(text, NS)
    if "{" not in text and "}" not in text:
        assert result == text


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=20))
def test_double_braces_are_literal(inner):
    assert interpolate("{{" + inner + "}}", NS) == "{" + inner + "}"


@given(st.text(alphabet="{}[]:'\" abcxyz0123_.!", max_size=40))
def test_without_known_names_only_escape_pairs_change(text):
    assume(not re.search(r"\{\{[^{}]*\}\}", text))
    assert interpolate(text, {}) == text
