"""Kernels that start together on a new ledger all take part in it: none is left working alone because the
others were opening it at the same moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from jlm_helpers.conditions import until

from jupyter_llm_manager.manager.cooperation.ledger import Ledger

KERNELS = 10

CHILD = textwrap.dedent("""
    import json, logging, os, sys, time
    from pathlib import Path
    from jlm_helpers.fakes import GB, FakeBackend, FakeDevices, fake
    from jupyter_llm_manager import LLMManager

    folder, index = Path(sys.argv[1]), sys.argv[2]
    warned = []

    class Kept(logging.Handler):
        def emit(self, record):
            warned.append(record.getMessage())

    logging.getLogger("jupyter_llm_manager").addHandler(Kept(logging.WARNING))
    devices = FakeDevices()
    backend = FakeBackend(devices)
    (folder / f"ready-{index}").touch()
    while not (folder / "go").exists():
        time.sleep(0.001)
    manager = LLMManager(device_probe=devices, backend_factory=lambda name: backend, config_path=False,
                         ledger_path=str(folder / "ledger.sqlite"), memory_budget={"cuda:0": 30 * GB})
    fake(manager, f"model-{index}", GB)
    manager.load(f"model-{index}")
    (folder / f"loaded-{index}.json").write_text(json.dumps(warned))
    while len(list(folder.glob("loaded-*"))) < int(sys.argv[3]):  # busy, as kernels at work are, while others open
        manager.unload(f"model-{index}")
        manager.load(f"model-{index}")
    (folder / f"busy-{index}.json").write_text(json.dumps(warned))
    while not (folder / "end").exists():
        time.sleep(0.01)
    manager.close()
""")


def test_kernels_starting_together_on_a_new_ledger_all_share_it(tmp_path: Path):
    folder = tmp_path / "ledger"
    folder.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(index), str(KERNELS)], env=env,
                                 stderr=subprocess.PIPE, text=True) for index in range(KERNELS)]
    try:
        assert until(lambda: len(list(folder.glob("ready-*"))) == KERNELS
                     or any(child.poll() is not None for child in children), timeout=120)
        (folder / "go").touch()  # every kernel opens the ledger now, none has created it yet
        assert until(lambda: len(list(folder.glob("busy-*.json"))) == KERNELS
                     or any(child.poll() is not None for child in children), timeout=120)
        warnings = {path.name: json.loads(path.read_text()) for path in folder.glob("busy-*.json")}
        assert len(warnings) == KERNELS, [child.stderr.read() for child in children if child.poll() is not None]
        assert not any(warnings.values()), warnings  # none worked alone ("cooperation ... is off for now")
        ledger = Ledger(folder / "ledger.sqlite")
        try:
            members, models = ledger.members(), ledger.models()
        finally:
            ledger.close()
        assert len(members) == KERNELS
        assert sorted(row.model_id for row in models) == sorted(f"model-{index}" for index in range(KERNELS))
    finally:
        (folder / "end").touch()
        for child in children:
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
