"""``psutil``, imported where Python has no Unix domain sockets too.

psutil's Linux module reads ``socket.AF_UNIX`` when it is imported (for
``net_connections``, which the manager never calls). Where a Python is built
without Unix sockets, importing it would fail, and with it the whole package,
which works alone there (cooperation off, ``machine()`` says why). The
constant is lent for the import only.
"""

from __future__ import annotations

import socket

try:
    import psutil
except AttributeError as error:  # pragma: no cover - only on a Python without Unix domain sockets
    if "AF_UNIX" not in str(error) or hasattr(socket, "AF_UNIX"):
        raise
    setattr(socket, "AF_UNIX", 1)  # noqa: B010 - the module has no such attribute here
    try:
        import psutil
    finally:
        delattr(socket, "AF_UNIX")

__all__ = ["psutil"]
