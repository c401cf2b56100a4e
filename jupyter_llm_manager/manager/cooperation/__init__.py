"""Cooperation: the managers of one user on one machine share its memory through a ledger.

``ledger``: the SQLite file of who holds what (one transaction per placement)
and its ``rows``; ``membership``: this manager as a member (joining, placing,
the machine-wide queue, answering); ``publishing``: its rows, written after
each change; ``peers``: the others, read and asked to make room; ``listener``:
how members reach each other; ``machine``: the report of the whole machine.
"""

from .membership import Cooperation, Placing
from .peers import Others

__all__ = ["Cooperation", "Others", "Placing"]
