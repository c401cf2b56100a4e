"""One report, one table: each module turns one of the manager's reports into a :class:`~.table.Table`.

Every front-end (the ``%llm`` magics, the ``jupyter-llm-manager`` command,
the dashboard, the JupyterLab bridge) takes its tables from here and shows
them as text, HTML or JSON (:mod:`.table`), choosing columns, never
building rows of its own. ``status``: ``status()``; ``registry``: the
registered ids and their specs; ``devices``: ``devices()``; ``plan``:
``plan()``; ``machine``: ``machine()``; ``estimate``: ``estimate()``;
``garbage``: ``collect_garbage()``; ``events``: ``events()``.
"""

from .table import Cell, Column, Table

__all__ = ["Cell", "Column", "Table"]
