"""Other kernels for the cooperation tests: a child process with its own manager, driven line by line.

Each command is one JSON line on the child's stdin; the answer is one JSON
line on its stdout. The child runs commands on its main thread, as a kernel
runs cells; ``busy`` keeps that thread busy (a long cell) so the tests see
that requests from other kernels are answered by the manager's own thread.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

CHILD = r'''
import json, sys, time, traceback
from jupyter_llm_manager import LLMManager

manager = None
leases = {}
seen = []

def placeholder(spec):  # a model of the size it declares: loader="__main__:placeholder", required_memory=...
    return {"id": spec.id}

def answer(**values):
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    command = json.loads(line)
    do = command.pop("do")
    started = time.monotonic()
    try:
        if do == "start":
            manager = LLMManager(config_path=False, preload=False, **command["settings"])
            manager.subscribe(lambda e: seen.append({"kind": e.kind, "model": e.model_id, "reason": e.reason,
                                                     "message": e.message, "at": time.monotonic()}))
            for model_id, options in command["models"].items():
                manager.register(model_id, **options)
            answer(ok=True)
        elif do == "load":
            manager.load(command["id"], wait=command.get("wait", 0))
            answer(ok=True, seconds=time.monotonic() - started)
        elif do == "hold":
            leases[command["id"]] = manager.use(command["id"], wait=command.get("wait", 0))
            leases[command["id"]].__enter__()
            answer(ok=True)
        elif do == "release":
            leases.pop(command["id"]).__exit__(None, None, None)
            answer(ok=True)
        elif do == "keep":  # a notebook variable keeps the model object: m = lm.model
            with manager.use(command["id"], wait=command.get("wait", 0)) as lease:
                globals()["kept"] = lease.model
            answer(ok=True)
        elif do == "drop":  # del m
            globals().pop("kept", None)
            import gc
            gc.collect()
            answer(ok=True)
        elif do == "unload":
            report = manager.unload(command["id"], wait=command.get("wait", 0))
            answer(ok=True, report=str(report), held=report.held_bytes if report else 0)
        elif do == "pin":
            manager.pin(command["id"])
            answer(ok=True)
        elif do == "states":
            answer(ok=True, states={row.id: row.state for row in manager.status()})
        elif do == "events":
            answer(ok=True, events=seen)
        elif do == "machine":
            report = manager.machine()
            answer(ok=True, kernels=[[k.pid, k.notebook, k.this] for k in report.kernels],
                   models=[[m.pid, m.notebook, m.model_id, m.state, m.in_use, m.this] for m in report.models])
        elif do == "cuda":
            import torch
            torch.cuda.synchronize()
            answer(ok=True, allocated=torch.cuda.memory_allocated(0))
        elif do == "generate":
            import psutil
            before = psutil.Process().memory_info().rss
            result = manager.generate(command["id"], command["prompt"], **command.get("params", {}))
            answer(ok=True, text=result.text, footer=result.summary(), served_by=result.served_by,
                   grew=psutil.Process().memory_info().rss - before)
        elif do == "stream":  # stream; after N pieces, a Ctrl-C here (interrupt_after) or SIGKILL to another (kill)
            import os, signal
            pieces, at, error, partial, first = [], None, None, "", None
            started = time.monotonic()
            stream = manager.stream(command["id"], command["prompt"], **command.get("params", {}))
            try:
                for piece in stream:
                    first = first or time.monotonic()
                    pieces.append(piece)
                    if len(pieces) == command.get("interrupt_after"):
                        at = time.monotonic()
                        os.kill(os.getpid(), signal.SIGINT)
                    if len(pieces) == command.get("kill_after"):
                        at = time.monotonic()
                        os.kill(command["kill"], signal.SIGKILL)
            except KeyboardInterrupt:
                error = "KeyboardInterrupt"
            except Exception as failure:
                error, partial = f"{type(failure).__name__}: {failure}", getattr(failure, "partial", "")
            answer(ok=True, pieces=pieces, at=at, error=error, partial=partial, started=started, first=first,
                   ended=time.monotonic(), tokens=stream.result.completion_tokens if stream.result else None,
                   footer=stream.result.summary() if stream.result else None)
        elif do == "busy":
            end = time.monotonic() + command["seconds"]
            while time.monotonic() < end:
                sum(range(1000))
            answer(ok=True)
        elif do == "exit":
            manager.close()
            answer(ok=True)
            break
    except Exception as error:
        answer(ok=False, error=f"{type(error).__name__}: {error}", seconds=time.monotonic() - started)
'''


class Kernel:
    """A child process with a manager (a notebook's kernel, for the tests)."""

    def __init__(self, name: str, folder: Path, ledger: Path, *, environment: dict[str, str] | None = None) -> None:
        self.ledger = ledger
        script = folder / "kernel.py"
        written = folder / f".kernel-{uuid.uuid4().hex}.py"
        written.write_text(CHILD)
        os.replace(written, script)  # whole at once: a kernel starting meanwhile never reads half a script
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_LLM_MANAGER_LEDGER": str(ledger),
               "JPY_SESSION_NAME": name, **(environment or {})}
        self.name = name
        self.process = subprocess.Popen([sys.executable, "-X", "faulthandler", str(script)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)

    def send(self, do: str, **values: Any) -> None:
        """Send a command without waiting for its answer (it may wait for another kernel)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"do": do, **values}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.process.wait(30)
            raise AssertionError(f"{self.name} is gone: {self.stderr_tail()}") from None

    def answer(self, timeout: float = 120) -> dict[str, Any]:
        """The answer to the oldest command not answered yet."""
        try:
            return json.loads(self._answers.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"{self.name} did not answer: {self.stderr_tail()}") from None

    def ask(self, do: str, timeout: float = 120, **values: Any) -> dict[str, Any]:
        self.send(do, **values)
        return self.answer(timeout)

    def stderr_tail(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return f"exit code {self.process.returncode}: {self.process.stderr.read()[-2000:]}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask("exit", timeout=30)
            except (AssertionError, OSError):
                pass
            self.process.kill()
        self.process.wait(30)
