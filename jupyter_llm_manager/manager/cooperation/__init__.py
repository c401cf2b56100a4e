"""Cooperation: the managers of one user on one machine share its memory through a ledger.

``ledger``: the SQLite file of who holds what; ``listener``: how managers
reach each other; ``membership``: this manager as a member (publish, read,
ask, answer); ``machine``: the report of the whole machine.
"""

from .machine import KernelRow, MachineModel, MachineReport
from .membership import Cooperation, Others

__all__ = ["Cooperation", "KernelRow", "MachineModel", "MachineReport", "Others"]
