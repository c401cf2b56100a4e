"""The kernel side of the JupyterLab extension: a comm that mirrors the manager and takes its clicks.

Registered by ``%load_ext``. Only JupyterLab opens the comm, to the target
``jupyter_llm_manager``: when it connects to a kernel, and again after a cell
that may have loaded the extension ran (the kernel closes it at once where
the extension is not loaded). The kernel never opens one itself, so a
frontend without the extension (classic Notebook, VS Code, nbclient) never
gets a comm it has no handler for. Every manager event pushes a fresh
snapshot (coalesced), also while a cell runs; JupyterLab never polls.
Messages carry ids and numbers, never model objects. Like the other
front-ends: no policy here.

JupyterLab >= 4.4 opens the comm on a kernel subshell of its own, and the comm
follows that routing (:mod:`.kernel_comms`), so clicks act while a cell runs.
Each action (:mod:`.lab_actions` checks a message and gives its call) runs on
a thread of its own: a Load, or an Unload waiting for an answer to end, never
holds back the next click. The panel is told at once what
an action waits for (``pending``), then its outcome with a fresh snapshot.
Timers, the machine watcher and action threads all send snapshots; each is
taken and sent in one hold of a lock, so a snapshot never arrives after a
newer one (the panel would show a state already gone, and drop an answer
such as "Unloaded" as no longer true).

A snapshot says which of this kernel's models were lost lately where it did
not ask (another notebook took the room, a keep-alive ran out), while they
stay unloaded. It also lists the other notebooks' models on this machine (from the
ledger, :mod:`.machine_reader`; a failure to read it is a note, never a broken
panel). Nothing in this kernel hears when they change, so while a panel is
connected a thread looks every few seconds and pushes a snapshot when they
did. ``ask_to_unload`` asks their manager to unload an idle one. When the
panel connects it says its notebook's path, from which the kernel learns the
Jupyter server's root: notebooks are then named relative to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config.secrets import shown_url
from ..errors import LLMManagerError, log_failure
from ..events import Event
from ..reports import StatusRow
from ..support.units import brief, format_bytes
from . import actions
from .kernel_comms import follow_frontend
from .lab_actions import LabActions, learn_server_root
from .machine_reader import MachineReader, server_root
from .views.devices import devices_table
from .views.lost import recent_losses
from .views.machine import machine_json
from .views.status import status_table

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["TARGET", "LabBridge"]

log = logging.getLogger(__name__)

TARGET = "jupyter_llm_manager"
_COALESCE_S = 0.1
#: How often the other notebooks' models are looked at while a panel is connected.
_MACHINE_S = 3.0
_ACTION_JOIN_S = actions.ACTION_WAIT_S + 5.0


class LabBridge:
    """Keeps every connected JupyterLab up to date with one manager."""

    def __init__(self, manager: LLMManager) -> None:
        self.manager = manager
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # a snapshot is taken and sent in one hold: none arrives after a newer one
        self._comms: list[Any] = []
        self._timer: threading.Timer | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._actions: list[threading.Thread] = []
        self._machine = MachineReader(manager)
        self._machine_sent: dict[str, Any] | None = None  # the machine part of the last snapshot
        self._clicks = LabActions(manager, self._machine)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def attach(self) -> None:
        """Listen for JupyterLab's comms, follow the manager's events and the other notebooks' models."""
        import comm

        comm.get_comm_manager().register_target(TARGET, self._on_open)
        self._unsubscribe = self.manager.subscribe(self._on_event)
        self._stop = threading.Event()

    def detach(self) -> None:
        """Stop: the panels and status bars of this kernel then say the extension is not loaded."""
        import comm

        manager = comm.get_comm_manager()
        if TARGET in getattr(manager, "targets", {}):
            manager.unregister_target(TARGET, self._on_open)
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(10)
        with self._lock:
            comms, self._comms = self._comms, []
            if self._timer is not None:
                self._timer.cancel()
            running = list(self._actions)
        self._clicks.cancel_all()  # an Unload waiting for an answer to end stops waiting
        for thread in running:
            thread.join(_ACTION_JOIN_S)
        for channel in comms:
            channel.close()

    # -- comms -----------------------------------------------------------------------------

    def _on_open(self, channel: Any, message: dict[str, Any]) -> None:
        envelope = message.get("content") if isinstance(message, dict) else None
        learn_server_root(envelope.get("data") if isinstance(envelope, dict) else None)
        self._adopt(channel)
        self._send_snapshot([channel])

    def _adopt(self, channel: Any) -> None:
        follow_frontend(channel)  # sent on a subshell, a click is handled there, also while a cell runs
        channel.on_msg(lambda message: self._on_message(channel, message))
        channel.on_close(lambda message: self._forget(channel))
        with self._lock:
            self._comms.append(channel)
            if self._watcher is None and not self._stop.is_set():  # the first panel: watch the machine from now on
                self._watcher = threading.Thread(target=self._watch_machine, args=(self._stop,),
                                                 name="llm-lab-machine", daemon=True)
                self._watcher.start()

    def _forget(self, channel: Any) -> None:
        with self._lock:
            if channel in self._comms:
                self._comms.remove(channel)

    def _on_event(self, event: Event) -> None:
        """Coalesce bursts of events into one snapshot sent shortly after."""
        with self._lock:
            if self._timer is not None or not self._comms:
                return
            self._timer = threading.Timer(_COALESCE_S, self._push)
            self._timer.daemon = True
            self._timer.name = "llm-lab-bridge"
            self._timer.start()

    def _push(self) -> None:
        with self._lock:
            self._timer = None
            comms = list(self._comms)
        if not comms:
            return
        try:
            self._send_snapshot(comms)
        except Exception as error:  # noqa: BLE001 - a timer thread: never a traceback into the running cell
            log_failure(log, "updating JupyterLab failed", error)

    def _send_snapshot(self, channels: list[Any], result: dict[str, Any] | None = None) -> None:
        """A fresh snapshot to ``channels``, after ``result`` (which carries it too), taken and sent in one hold."""
        with self._send_lock:
            snapshot = self.snapshot()
            for channel in channels:
                if result is not None:
                    channel.send({**result, "snapshot": snapshot})
                channel.send(snapshot)

    def _watch_machine(self, stop: threading.Event) -> None:
        """The watcher thread: a fresh snapshot when the other notebooks' models changed (no event says so)."""
        while not stop.wait(_MACHINE_S):
            with self._lock:
                connected, sent = bool(self._comms), self._machine_sent
            if connected and machine_json(self._machine.read(), server_root()) != sent:
                self._push()

    # -- actions ----------------------------------------------------------------------------

    def _on_message(self, channel: Any, message: Any) -> None:
        """A click in JupyterLab: say what it waits for, run its shared action on a thread, answer with the outcome.

        Every message gets an answer; a malformed one gets ``ok: false`` and
        the reason at once, logged without a traceback (a client sent it; it
        is not a bug here).
        """
        envelope = message.get("content") if isinstance(message, dict) else None
        data = envelope.get("data") if isinstance(envelope, dict) else None
        content = data if isinstance(data, dict) else {}
        request = content.get("request")
        if isinstance(request, bool) or not isinstance(request, (str, int)) or len(str(request)) > 100:
            request = None  # an id we can echo back; anything else is not one
        try:
            call = self._clicks.call_for(content) if isinstance(data, dict) else None
        except LLMManagerError as error:
            call, problem = None, str(error)
        else:
            problem = "" if call is not None else f"a message must be a mapping with an action, got {brief(data)}"
        if call is None:
            log.info("malformed message from JupyterLab: %s", problem)
            channel.send({"type": "result", "request": request, "ok": False, "message": problem})
            return
        if content.get("action") == "refresh":
            learn_server_root(content)  # sent when the panel connects
        note = self._clicks.waiting_note(content)
        if note:
            channel.send({"type": "pending", "request": request, "message": note})
        self._start(channel, request, call)

    def _start(self, channel: Any, request: str | int | None, call: Callable[[], str]) -> None:
        thread = threading.Thread(target=self._answer, args=(channel, request, call), name="llm-lab-action",
                                  daemon=True)
        with self._lock:
            self._actions = [t for t in self._actions if t.is_alive()] + [thread]
        thread.start()

    def _answer(self, channel: Any, request: str | int | None, call: Callable[[], str]) -> None:
        try:
            text, ok = call(), True
        except LLMManagerError as error:
            text, ok = str(error), False
        except Exception as error:  # noqa: BLE001 - a bug: logged and answered in one line
            log_failure(log, "a JupyterLab action failed", error)
            text, ok = f"{type(error).__name__}: {error}", False
        try:
            self._send_snapshot([channel], {"type": "result", "request": request, "ok": ok, "message": text})
        except Exception as error:  # noqa: BLE001 - an action thread: never a traceback into the running cell
            log_failure(log, "answering JupyterLab failed", error)

    # -- what JupyterLab shows -----------------------------------------------------------------

    def _endpoint(self, row: StatusRow) -> str | None:
        """Where a remote model runs: the server it answered from, else the URL it was registered with."""
        endpoint = row.details.get("endpoint")
        if endpoint:
            return str(endpoint)
        try:
            base_url = self.manager.spec(row.id).base_url
        except LLMManagerError:
            return None  # unregistered meanwhile
        return shown_url(base_url) if base_url else None

    def snapshot(self) -> dict[str, Any]:
        """The models and devices as JupyterLab shows them: ids, states and numbers only."""
        now = time.time()
        rows = self.manager.status()
        endpoints = {row.id: self._endpoint(row) for row in rows if row.remote}
        models = status_table(rows, endpoints=endpoints).select("model", "state", "device", "memory", "error")
        loaded = [row for row in rows if row.state == "loaded"]
        held = sum(row.actual_bytes or 0 for row in loaded)
        reports = self.manager.devices()
        view = self._machine.read()
        machine = machine_json(view, server_root())
        with self._lock:
            self._machine_sent = machine
        return {"type": "snapshot", "time": now, "loaded": len(loaded), "held_bytes": held,
                "held_str": format_bytes(held), "reserved_str": format_bytes(sum(d.held_bytes for d in reports)),
                "models": models.json()["rows"], "devices": devices_table(reports, view.others_on).json()["rows"],
                "machine": machine, "lost": recent_losses(self.manager.events(None), (r.id for r in loaded), now)}
