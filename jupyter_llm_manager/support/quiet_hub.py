"""huggingface_hub's retry warnings, kept out of the notebook while the manager downloads.

When the Hub cannot be reached, ``huggingface_hub`` retries five times
(1 + 2 + 4 + 8 + 8 s) and logs each retry as a warning to stderr: a dozen lines
in the cell of a request that then fails with its own one-line error. While
:func:`quiet_hub` is active, those records go to this module's logger at
debug level instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_hub"]

log = logging.getLogger(__name__)

#: The loggers that write huggingface_hub's retries (``http_backoff``) and download warnings.
_HUB_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.file_download")


class _ToDebug(logging.Filter):
    """Drops a record where it is made, and logs it again here at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("huggingface_hub: %s", record.getMessage())
        return False


_filter = _ToDebug()
_lock = threading.Lock()
_active = 0


@contextmanager
def quiet_hub() -> Iterator[None]:
    """While the block runs, huggingface_hub's retry and download warnings are debug lines of this logger."""
    global _active
    with _lock:
        if _active == 0:
            for name in _HUB_LOGGERS:
                logging.getLogger(name).addFilter(_filter)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for name in _HUB_LOGGERS:
                    logging.getLogger(name).removeFilter(_filter)
