"""Cooperation: the managers of one user on one machine share its memory through a ledger.

``ledger``: the SQLite file of who holds what; ``listener``: how managers
reach each other; ``membership``: this manager as a member (publish, read,
ask, answer, and the report of the whole machine).
"""

from .membership import Cooperation, Others

__all__ = ["Cooperation", "Others"]
