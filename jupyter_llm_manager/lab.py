"""The kernel side of the JupyterLab extension: a comm that mirrors the manager and takes its clicks.

Registered by ``%load_ext``. JupyterLab opens a comm to the target
``jupyter_llm_manager`` when it connects to a kernel (it is closed at once
where the extension is not loaded), and the kernel opens one to JupyterLab
when the extension loads, so a status bar and a panel already showing learn
it at once. Every manager event pushes a fresh snapshot (coalesced), also
while a cell runs; JupyterLab never polls. Messages carry ids and numbers,
never model objects. Like the other front-ends: no policy here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .errors import LLMManagerError
from .events import Event
from .units import format_bytes

if TYPE_CHECKING:
    from .manager import LLMManager

__all__ = ["LabBridge", "TARGET"]

log = logging.getLogger(__name__)

TARGET = "jupyter_llm_manager"
_COALESCE_S = 0.1


class LabBridge:
    """Keeps every connected JupyterLab up to date with one manager."""

    def __init__(self, manager: "LLMManager") -> None:
        self.manager = manager
        self._lock = threading.Lock()
        self._comms: list[Any] = []
        self._timer: threading.Timer | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self) -> None:
        """Listen for JupyterLab, tell the ones already connected, and follow the manager's events."""
        import comm

        comm.get_comm_manager().register_target(TARGET, self._on_open)
        self._unsubscribe = self.manager.subscribe(self._on_event)
        self._adopt(comm.create_comm(target_name=TARGET, data=self.snapshot()))

    def detach(self) -> None:
        """Stop: the panels and status bars of this kernel then say the extension is not loaded."""
        import comm

        manager = comm.get_comm_manager()
        if TARGET in getattr(manager, "targets", {}):
            manager.unregister_target(TARGET, self._on_open)
        if self._unsubscribe is not None:
            self._unsubscribe()
        with self._lock:
            comms, self._comms = self._comms, []
            if self._timer is not None:
                self._timer.cancel()
        for channel in comms:
            channel.close()

    # -- comms -----------------------------------------------------------------------------

    def _on_open(self, channel: Any, message: dict[str, Any]) -> None:
        self._adopt(channel)
        channel.send(self.snapshot())

    def _adopt(self, channel: Any) -> None:
        channel.on_msg(lambda message: self._on_message(channel, message))
        channel.on_close(lambda message: self._forget(channel))
        with self._lock:
            self._comms.append(channel)

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
        if comms:
            snapshot = self.snapshot()
            for channel in comms:
                channel.send(snapshot)

    # -- actions ----------------------------------------------------------------------------

    def _on_message(self, channel: Any, message: dict[str, Any]) -> None:
        data = message.get("content", {}).get("data", {}) or {}
        action, model_id, request = data.get("action"), data.get("model"), data.get("request")
        try:
            text, ok = self._run(action, model_id), True
        except LLMManagerError as error:
            text, ok = str(error), False
        except Exception as error:  # a bug: logged with its traceback, answered in one line
            log.exception("the JupyterLab action %r failed", action)
            text, ok = f"{type(error).__name__}: {error}", False
        channel.send({"type": "result", "request": request, "ok": ok, "message": text})
        channel.send(self.snapshot())

    def _run(self, action: str | None, model_id: str | None) -> str:
        manager = self.manager
        if action == "unload":
            report = manager.unload(model_id or "", wait=0.0)
            return str(report) if report else f"{model_id!r} was not loaded."
        if action in ("pin", "unpin"):
            (manager.pin if action == "pin" else manager.unpin)(model_id or "")
            return f"{'Pinned' if action == 'pin' else 'Unpinned'} {model_id!r}."
        if action == "unload_all":
            reports = manager.unload_all(skip_in_use=True)
            in_use = [row.id for row in manager.status() if row.in_use]
            return (f"Unloaded {len(reports)} model(s)."
                    + (f" Still in use: {', '.join(in_use)}." if in_use else ""))
        if action == "free_memory":
            return str(manager.collect_garbage())
        if action == "refresh":
            return ""
        raise LLMManagerError(f"unknown action {action!r}")

    # -- what JupyterLab shows -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The models and devices as JupyterLab shows them: ids, states and numbers only."""
        now = time.time()
        rows = self.manager.status()
        models = [{
            "id": row.id, "aliases": list(row.aliases), "backend": row.backend, "device": row.device,
            "state": row.state, "in_use": row.in_use, "pinned": row.pinned, "remote": row.remote,
            "estimated": row.estimated_str, "actual": row.actual_str, "actual_bytes": row.actual_bytes,
            "last_used": row.last_used, "expires_at": row.expires_at, "error": row.error,
            "trust_remote_code": row.trust_remote_code,
        } for row in rows]
        loaded = [row for row in rows if row.state == "loaded"]
        held = sum(row.actual_bytes or 0 for row in loaded)
        devices = [{"device": d.device, "name": d.name, "total": d.total_str, "free": d.free_str,
                    "budget": d.budget_str, "held": d.held_str} for d in self.manager.devices()]
        return {"type": "snapshot", "time": now, "loaded": len(loaded), "held_bytes": held,
                "held_str": format_bytes(held), "models": models, "devices": devices}
