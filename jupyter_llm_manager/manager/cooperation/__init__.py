"""Cooperation: the managers of one user on one machine share its memory through a ledger.

``ledger``: who holds what, in one SQLite file (``ledger_file``: its
connection; ``rows``), one transaction per placement; ``room``: placing a
model with the others, the machine-wide queue, asking for room;
``membership``: this manager as a member (joining, leaving, answering);
``publishing``: its rows, written after each change; ``peers``: the others,
read and asked; ``listener``: how members reach each other; ``machine``: the
report of the whole machine.
"""

from .peers import Others
from .room import Cooperation, Placing

__all__ = ["Cooperation", "Others", "Placing"]
