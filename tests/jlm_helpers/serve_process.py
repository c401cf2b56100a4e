"""``jupyter-llm-manager serve`` in a child process, with its own configuration, ledger and runtime folder."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jlm_helpers.conditions import until
from jlm_helpers.processes import stop
from jupyter_llm_manager.manager.sharing.serving import RUNTIME_FILE


@dataclass(frozen=True)
class ServeProcess:
    url: str  # ends with /v1
    token: str
    runtime_file: Path
    process: subprocess.Popen
    log: Path
    ledger: Path  # the machine's ledger it publishes its models (and their leases) to

    def output(self) -> str:
        """What it printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve_process(folder: Path, config: str) -> Iterator[ServeProcess]:
    """``serve`` with ``config`` as its configuration file; yields once its runtime file says where it listens."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "llm.yaml").write_text(config)
    runtime = folder / "runtime"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "JUPYTER_LLM_MANAGER_CONFIG": str(folder / "llm.yaml"), "JUPYTER_RUNTIME_DIR": str(runtime),
           "JUPYTER_CONFIG_DIR": str(folder / "jupyter-config"),
           "JUPYTER_LLM_MANAGER_LEDGER": str(folder / "ledger.sqlite")}
    log = folder / "serve.log"
    with log.open("w") as out:  # a file, not a pipe: llama.cpp's logging never blocks the server
        process = subprocess.Popen([sys.executable, "-m", "jupyter_llm_manager", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    path = runtime / RUNTIME_FILE
    try:
        assert until(lambda: path.exists() or process.poll() is not None, timeout=120), "serve did not start"
        assert process.poll() is None, f"serve exited: {log.read_text()}"
        written = json.loads(path.read_text())
        yield ServeProcess(written["url"], written["token"], path, process, log, folder / "ledger.sqlite")
    finally:
        stop(process)
