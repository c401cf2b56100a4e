"""How a streamed answer appears in a cell: one display updated in place, or plain text.

In a notebook (JupyterLab, classic, VS Code) the answer is one output updated
in place at most every ``interval`` seconds, rendered as Markdown, text, HTML,
code or JSON, with a small status line below (loading, evictions, then
tokens and speed). Several models are shown side by side. In a terminal the
text is written as it comes. Views hold text only, never model objects.
"""

from __future__ import annotations

import html
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

from ...generation import GenerationResult
from ...support.units import displayable

__all__ = ["FORMATS", "AnswerView", "Format", "RichAnswerView", "TextAnswerView", "extract_code", "footer",
           "keep_line_breaks"]

Format = Literal["markdown", "text", "code", "html", "json"]
FORMATS: tuple[Format, ...] = ("markdown", "text", "code", "html", "json")


def as_format(name: str) -> Format:
    """``name`` as a :data:`Format` (``ValueError`` for an unknown one)."""
    for known in FORMATS:
        if known == name:
            return known
    raise ValueError(f"unknown format {name!r}; use one of {', '.join(FORMATS)}")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.DOTALL)
_MUTED = "color: var(--jp-ui-font-color2, #777); font-size: smaller"
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HARD_BREAK = "  "  # two trailing spaces: a hard line break in CommonMark, invisible elsewhere


def keep_line_breaks(answer: str) -> str:
    """``answer`` as Markdown that keeps its single line breaks, as chat UIs show them.

    Markdown joins consecutive lines into one paragraph ("Red (R)\\nBlue (B)"
    renders as "Red (R) Blue (B)"); a hard break at the end of each line that
    another line follows keeps them apart. Fenced code and table rows are left
    as they are (line breaks already hold there).
    """
    lines = answer.split("\n")
    fence = ""
    for index, line in enumerate(lines[:-1]):
        opening = _FENCE_OPEN.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = ""  # the closing fence
            continue
        if opening:
            fence = opening.group(1)
            continue
        if _breaks_here(line, lines[index + 1]):
            ending = "\r" if line.endswith("\r") else ""  # a Windows line end stays last
            lines[index] = line.rstrip("\r").rstrip(" ") + _HARD_BREAK + ending
    return "\n".join(lines)


def _breaks_here(line: str, following: str) -> bool:
    """Whether a hard break belongs after ``line``: text follows it, and neither is a table row."""
    if not line.strip() or not following.strip() or line.rstrip("\r").endswith("\\"):
        return False
    return not (line.lstrip().startswith("|") or following.lstrip().startswith("|"))


def extract_code(answer: str) -> str:
    """The code of an answer: the contents of its fenced blocks, or the whole text."""
    blocks = [block.strip("\n") for block in _FENCE.findall(answer)]
    return "\n\n".join(blocks) if blocks else answer.strip()


def footer(result: GenerationResult) -> str:
    """The small print under an answer, in the magic's words: ``… · stopped at the 256-token limit: -n to allow more``."""
    return result.summary(more_tokens="-n", let_run="-p repetition_penalty=1.0")


def _json_value(answer: str) -> Any:
    for candidate in (answer, extract_code(answer)):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


class AnswerView:
    """Receives pieces and results for one or more models; decides how they show."""

    def __init__(self, model_ids: Sequence[str], fmt: Format = "markdown", *, interval: float = 0.1,
                 footer: bool = True) -> None:
        self.model_ids = list(model_ids)
        self.format = fmt
        self.interval = interval
        self.footer = footer
        self.texts = {model_id: "" for model_id in self.model_ids}
        self.summaries: dict[str, str] = {}
        self.notes: list[str] = []
        self.notices: list[str] = []
        self.progress_note: str | None = None  # what is happening now ("loading x… 4 s"), replaced as it goes

    def add(self, model_id: str, piece: str) -> None:
        self.texts[model_id] += piece

    def status(self, note: str, *, replaces: str | None = None) -> None:
        """A short note about what is happening (loading, an eviction), on the status line.

        ``replaces``: an earlier note this one takes the place of (a wait that is over says how long it took).
        """
        if replaces is not None and replaces in self.notes:
            self.notes[self.notes.index(replaces)] = note
        else:
            self.notes.append(note)

    def notice(self, text: str) -> None:
        """A sentence worth its own line below the answer (said once, e.g. about demo models)."""
        self.notices.append(text)

    def progress(self, text: str | None) -> None:
        """What is happening right now, replacing the previous progress note (``None``: done)."""
        self.progress_note = text

    def finish(self, model_id: str, result: GenerationResult | None, error: str | None = None) -> None:
        """One model's answer is complete (or was interrupted, or failed)."""
        if result is not None:
            self.texts[model_id] = result.text
            self.summaries[model_id] = footer(result)
        if error:
            self.summaries[model_id] = f"{model_id} · {error}"

    def close(self) -> None:
        """Show the final state."""


class RichAnswerView(AnswerView):
    """Display-based view for notebook front-ends."""

    def __init__(self, model_ids: Sequence[str], fmt: Format = "markdown", **options: Any) -> None:
        super().__init__(model_ids, fmt, **options)
        from IPython.display import display

        self._display = display
        self._last_update = 0.0
        self._answer = display(self._answer_bundle(final=False), raw=True, display_id=True)
        self._status = display(self._status_bundle(), raw=True, display_id=True) if self.footer else None

    def add(self, model_id: str, piece: str) -> None:
        super().add(model_id, piece)
        now = time.monotonic()
        if now - self._last_update >= self.interval:
            self._last_update = now
            self._answer.update(self._answer_bundle(final=False), raw=True)

    def status(self, note: str, *, replaces: str | None = None) -> None:
        super().status(note, replaces=replaces)
        self._refresh_status()

    def notice(self, text: str) -> None:
        super().notice(text)
        self._refresh_status()

    def progress(self, text: str | None) -> None:
        super().progress(text)
        self._refresh_status()

    def finish(self, model_id: str, result: GenerationResult | None, error: str | None = None) -> None:
        super().finish(model_id, result, error)
        self._answer.update(self._answer_bundle(final=model_id == self.model_ids[-1]), raw=True)
        self._refresh_status()

    def close(self) -> None:
        self._answer.update(self._answer_bundle(final=True), raw=True)
        self._refresh_status()

    def _refresh_status(self) -> None:
        if self._status is not None:
            self._status.update(self._status_bundle(), raw=True)

    def _answer_bundle(self, final: bool) -> dict[str, Any]:
        if len(self.model_ids) > 1:
            return self._columns_bundle()
        text = self.texts[self.model_ids[0]]
        if self.format == "markdown":
            return {"text/markdown": keep_line_breaks(text), "text/plain": text}
        if self.format == "html":
            return {"text/html": text, "text/plain": text}
        if self.format == "code":
            code = extract_code(text) if final else text
            return {"text/markdown": f"```\n{code}\n```", "text/plain": code}
        value = _json_value(text) if self.format == "json" and final else None
        if value is not None:
            return {"application/json": value, "text/plain": text}
        return {"text/plain": text}

    def _columns_bundle(self) -> dict[str, Any]:
        columns = "".join(
            "<div style='flex: 1 1 0; min-width: 16em; border-left: 2px solid var(--jp-border-color2, #ddd);"
            " padding: 0 0.6em'>"
            f"<div><b>{html.escape(model_id)}</b></div>"
            f"<div style='white-space: pre-wrap; overflow-wrap: anywhere'>{html.escape(self.texts[model_id])}</div>"
            f"<div style='{_MUTED}'>{html.escape(self.summaries.get(model_id, ''))}</div></div>"
            for model_id in self.model_ids)
        plain = "\n\n".join(f"── {m} ──\n{self.texts[m]}\n{self.summaries.get(m, '')}".rstrip()
                            for m in self.model_ids)
        return {"text/html": f"<div style='display: flex; gap: 0.4em; flex-wrap: wrap'>{columns}</div>",
                "text/plain": plain}

    def _status_bundle(self) -> dict[str, Any]:
        parts = list(self.notes) + ([self.progress_note] if self.progress_note else [])
        if len(self.model_ids) == 1 and self.model_ids[0] in self.summaries:
            parts.append(self.summaries[self.model_ids[0]])
        lines = [" · ".join(parts)] if parts else []
        lines += self.notices
        return {"text/html": "".join(f"<div style='{_MUTED}'>{html.escape(line)}</div>" for line in lines),
                "text/plain": "\n".join(lines)}


class TextAnswerView(AnswerView):
    """Plain text for terminals: pieces are written as they come."""

    def __init__(self, model_ids: Sequence[str], fmt: Format = "markdown", *, stream: Any = None,
                 **options: Any) -> None:
        super().__init__(model_ids, fmt, **options)
        self._out = stream or sys.stdout
        self._current: str | None = None

    def add(self, model_id: str, piece: str) -> None:
        super().add(model_id, piece)
        self._begin(model_id)
        self._write(piece)

    def status(self, note: str, *, replaces: str | None = None) -> None:
        super().status(note, replaces=replaces)
        if self.footer:
            self._write(f"[{note}]\n")

    def notice(self, text: str) -> None:
        super().notice(text)
        self._write(f"[{text}]\n")

    def finish(self, model_id: str, result: GenerationResult | None, error: str | None = None) -> None:
        shown = self.texts[model_id]
        super().finish(model_id, result, error)
        self._begin(model_id)
        if result is not None and not shown:  # not streamed (--no-stream): write it now
            self._write(result.text)
        if self.footer and model_id in self.summaries:
            self._write(f"\n[{self.summaries[model_id]}]\n")
        else:
            self._write("\n")
        self._current = None

    def _begin(self, model_id: str) -> None:
        if self._current != model_id:
            self._current = model_id
            if len(self.model_ids) > 1:
                self._write(f"── {model_id} ──\n")

    def _write(self, text: str) -> None:
        self._out.write(displayable(text))
        self._out.flush()
