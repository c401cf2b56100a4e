"""Point-in-time reports the manager returns: frozen dataclasses with raw fields and readable ``*_str``.

They hold ids and numbers, never model objects, so front-ends can keep them;
front-ends turn each into tables.
``status``: a model id's row, an unload, a garbage collection; ``plan``:
``plan()``; ``machine``: ``machine()``; ``devices``: ``devices()``;
``estimate``: ``estimate()``.
"""

from .devices import DeviceReport
from .estimate import MemoryEstimate
from .machine import GpuProcess, KernelRow, MachineModel, MachineReport
from .plan import PlanDevice, PlanModel, PlanReport
from .status import GarbageReport, ModelState, StatusRow, UnloadReport

__all__ = ["DeviceReport", "GarbageReport", "GpuProcess", "KernelRow", "MachineModel", "MachineReport",
           "MemoryEstimate", "ModelState", "PlanDevice", "PlanModel", "PlanReport", "StatusRow", "UnloadReport"]
