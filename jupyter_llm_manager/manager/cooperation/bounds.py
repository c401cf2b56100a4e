"""The bounds of what members send each other, and who may connect: shared by the server and the client."""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["BODY_S", "HEADER_S", "MAX_CONNECTIONS", "MAX_DEPTH", "MAX_MESSAGE", "peer_is_this_user"]

#: The largest request or answer body, in bytes: a few model keys and a sentence.
MAX_MESSAGE = 64 * 1024
#: The deepest nesting of a JSON body (a list in a dict in a list...).
MAX_DEPTH = 32
#: How long a client may take to send its body.
BODY_S = 2.0
#: How long a client may take to send a request's line and headers, from connecting or from starting it.
HEADER_S = 2.0
#: Connections served at once (beyond: a 503); a connection that sends no whole request goes after HEADER_S.
MAX_CONNECTIONS = 256


def peer_is_this_user(connection: socket.socket) -> bool:
    """Whether the process at the other end of a Unix socket runs as this user (true where it cannot be told)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True  # the socket's private folder is the guard there
    try:
        _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    except OSError:
        return False
    return uid == os.getuid()
