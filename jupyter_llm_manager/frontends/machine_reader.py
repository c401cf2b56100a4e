"""Other notebooks on this machine, read for the dashboard and the JupyterLab panel (shown by :mod:`.views.machine`).

Reading ``manager.machine()`` is a small query of the ledger (SQLite) and a
look at the GPU's processes. The front-ends read it on their own threads (the
dashboard's writer, the bridge's watcher, an action's thread), at most every
few seconds, never in a widget's callback; a failure never breaks a
front-end: the view then says why the machine is not known, and the log says
so once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import log_failure
from ..reports import MachineModel
from ..support.names import known_server_root, remember_server_root
from ..support.units import excerpt

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["MachineReader", "MachineView", "remember_server_root", "server_root"]

log = logging.getLogger(__name__)


def server_root() -> str | None:
    """The Jupyter server's root folder where a JupyterLab panel said it, else ``None``."""
    return known_server_root()


@dataclass(frozen=True)
class MachineView:
    """The models other managers (kernels, scripts) of this user hold on this machine, or why they are unknown."""

    models: tuple[MachineModel, ...] = ()  # the other managers' models only, by device then most recent use
    cooperating: bool = False
    problem: str = ""  # why the machine could not be read ("" when it was)

    def others_on(self, device: str) -> int:
        """Bytes the other notebooks' models hold on ``device``."""
        return sum(model.bytes for model in self.models if model.device == device)


class MachineReader:
    """Reads the machine for one front-end, never failing; keeps the last view for callers that may reuse it."""

    def __init__(self, manager: LLMManager) -> None:
        self._manager = manager
        self._lock = threading.Lock()
        self._view: MachineView | None = None
        self._read_at = 0.0
        self._problem = ""  # the failure last logged, so a lasting one is logged once

    def read(self, max_age: float = 0.0) -> MachineView:
        """The last view while it is younger than ``max_age`` seconds, else a new one (``0``: always new)."""
        with self._lock:
            if self._view is not None and time.monotonic() - self._read_at < max_age:
                return self._view
        view = self._read()
        with self._lock:
            self._view, self._read_at = view, time.monotonic()
        return view

    def _read(self) -> MachineView:
        try:
            report = self._manager.machine()
        except Exception as error:  # noqa: BLE001 - the machine view is an extra: a front-end keeps working without
            said = excerpt(f"{type(error).__name__}: {error}", 300)
            if said != self._problem:
                self._problem = said
                log_failure(log, "reading the other notebooks on this machine failed", error)
            return MachineView(problem=f"the other notebooks on this machine are not known now ({said})")
        self._problem = ""
        others = sorted((m for m in report.models if not m.this), key=lambda m: (m.device, -m.last_used, m.model_id))
        return MachineView(tuple(others), report.cooperating)

