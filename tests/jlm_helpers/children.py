"""Running risky code in a child Python: a native crash, a hang or a runaway allocation fails the test, not pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

__all__ = ["CHILD_MEMORY", "HANG", "child", "run_child"]

HANG = 120  # seconds a child may take before the test calls it a hang (most take a few)
CHILD_MEMORY = 8 * 2**30


def limited() -> None:
    """In the child, before it runs: a cap on its memory, so code that believes a claimed count fails."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def child(arguments: list[str], *, timeout: float = HANG, **options) -> subprocess.CompletedProcess:
    """Run a command with the tests' import path, a memory cap and a timeout (a hang fails the test)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path), **options.pop("env", {})}
    return subprocess.run(arguments, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                          preexec_fn=limited if sys.platform == "linux" else None, **options)


def run_child(code: str, *, timeout: float = HANG, **options) -> dict:
    """Run ``code`` in a fresh Python and return the JSON its last line prints (it must exit normally)."""
    done = child([sys.executable, "-c", textwrap.dedent(code)], timeout=timeout, **options)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
