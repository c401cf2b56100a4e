"""What a click in the JupyterLab panel asks the kernel, checked, as a shared action (:mod:`.actions`).

A message names an action and its arguments; :class:`LabActions` turns it
into a call to run on a thread of its own, or refuses it with the reason
(a client sent it: every argument is checked). An Unload of a model in use
waits for the answer to end, however long; ``cancel_unload`` (or a second
``unload``) takes it back. When another notebook's manager is asked to
unload one of its models, its answer names that notebook.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import LLMManagerError
from ..support.names import notebook_names
from ..support.names import server_root as root_of_server
from ..support.units import brief
from . import actions
from .machine_reader import MachineReader, remember_server_root, server_root

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["DOING", "LabActions", "learn_server_root"]

_LONGEST_MEMBER = 200
_LONGEST_PATH = 4096
_OWNERS_AGE_S = 3.0  # how old the list of the other notebooks' models may be when one of them is asked
#: The owner's answer to an Unload asked for from another notebook ("unloaded 'x' for ASKER: 1 GB freed").
_UNLOADED_FOR = re.compile(r"unloaded (?P<model>'.*?') for .*?: (?P<rest>[^:]* freed.*)", re.DOTALL)
#: What the panel shows while an action runs (``waiting_note`` adds what it waits for).
DOING = {"load": "loading", "unload": "unloading", "pin": "pinning", "unpin": "unpinning", "toggle_pin": "pinning",
         "unload_all": "unloading all", "free_memory": "collecting", "refresh": "refreshing"}


def learn_server_root(data: Any) -> None:
    """The Jupyter server's root, from what the panel says when it connects: its notebook's path (relative to the
    root; with this kernel's ``JPY_SESSION_NAME``, absolute) or the root itself (JupyterLab's ``serverRoot``)."""
    if not isinstance(data, dict):
        return
    path, given = data.get("path"), data.get("root")
    root = None
    if isinstance(path, str) and len(path) <= _LONGEST_PATH:
        root = root_of_server(os.environ.get("JPY_SESSION_NAME", ""), path)
    if root is None and isinstance(given, str) and len(given) <= _LONGEST_PATH:
        expanded = os.path.expanduser(given)
        root = expanded if os.path.isabs(expanded) else None
    remember_server_root(root)


class LabActions:
    """The panel's clicks for one manager: each message's call, what it waits for, the Unloads that wait."""

    def __init__(self, manager: LLMManager, machine: MachineReader) -> None:
        self.manager = manager
        self._machine = machine
        self._unloads = actions.WaitingUnloads()

    def cancel_all(self) -> None:
        """Take back every Unload that waits for an answer to end (the bridge detaches)."""
        self._unloads.cancel_all()

    def waiting_note(self, content: dict[str, Any]) -> str:
        """What the action asked for waits for, right now (a model in use, a load under way)."""
        model_id, doing = content.get("model"), DOING.get(str(content.get("action")), "")
        if not isinstance(model_id, str) or not doing:
            return ""
        try:
            return actions.waiting_note(self.manager.row(model_id), doing)
        except LLMManagerError:
            return ""  # an unknown id: the action itself says so

    def call_for(self, content: dict[str, Any]) -> Callable[[], str]:
        """The shared action a message asks for (``LLMManagerError`` when there is none)."""
        action, model_id = content.get("action"), content.get("model")
        manager = self.manager
        if action in ("unload", "cancel_unload", "pin", "unpin", "toggle_pin", "load"):
            if not isinstance(model_id, str) or not model_id:
                raise LLMManagerError(f"the action {action!r} needs a model id, got {brief(model_id)}")
            if action in ("unload", "cancel_unload"):
                return self._unload(model_id, cancel=action == "cancel_unload")
            function = getattr(actions, action)
            return lambda: function(manager, model_id)
        if action == "unload_all":
            return lambda: actions.unload_all(manager)
        if action == "free_memory":
            return lambda: actions.free_memory(manager)
        if action == "refresh":
            return lambda: ""
        if action == "ask_to_unload":
            member = content.get("member")
            if not isinstance(member, str) or not member or len(member) > _LONGEST_MEMBER:
                raise LLMManagerError(f"ask_to_unload needs the member id of another manager, got {brief(member)}")
            if not isinstance(model_id, str) or not model_id:
                raise LLMManagerError(f"ask_to_unload needs a model id, got {brief(model_id)}")
            return lambda: self._ask_to_unload(member, model_id)
        raise LLMManagerError(f"unknown action {brief(action)}")

    def _ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another notebook's manager; its answer as the asker reads it, that notebook named first."""
        owners = {m.member: m.notebook for m in self._machine.read(_OWNERS_AGE_S).models}  # before it is gone
        said = self.manager.ask_to_unload(member, model_id)
        owner = notebook_names([owners[member]], root=server_root())[owners[member]].shown \
            if member in owners else "the other notebook"
        unloaded = _UNLOADED_FOR.fullmatch(said)
        return f"{owner} unloaded {unloaded['model']}: {unloaded['rest']}" if unloaded else f"{owner}: {said}"

    def _unload(self, model_id: str, *, cancel: bool) -> Callable[[], str]:
        """Unload once the model is released, however long its answer runs; a second click or a Cancel takes it
        back (that click is answered at once, the Unload with "cancelled")."""
        unload = None if cancel else self._unloads.start(self.manager, model_id)
        if unload is not None:
            return unload
        if cancel and not self._unloads.cancel(model_id):
            return lambda: f"No unload of {model_id!r} is waiting."
        return lambda: f"Taking back the unload of {model_id!r}…"
