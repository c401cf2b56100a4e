"""Importing the core pulls in neither torch, IPython nor ipywidgets until a backend is used."""

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "IPython", "ipywidgets")


def run(code: str, cwd) -> dict:
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))
    """)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def test_importing_the_manager_imports_nothing_heavy(tmp_path):
    assert run("import jupyter_llm_manager.manager.facade", tmp_path) == dict.fromkeys(HEAVY, False)
    assert run("import jupyter_llm_manager", tmp_path) == dict.fromkeys(HEAVY, False)


def test_registering_estimating_and_status_need_no_torch(tmp_path, tiny_models):
    imported = run(f"""
        from jupyter_llm_manager import LLMManager
        manager = LLMManager(config_path=False)
        manager.register("a", source={str(tiny_models['a'])!r})
        manager.estimate("a"); manager.status(); manager.devices()
    """, tmp_path)
    assert imported == dict.fromkeys(HEAVY, False)


def test_loading_a_model_imports_torch_but_not_the_front_ends(tmp_path, tiny_models):
    imported = run(f"""
        from jupyter_llm_manager import LLMManager
        manager = LLMManager(config_path=False)
        manager.register("a", source={str(tiny_models['a'])!r})
        manager.load("a")
    """, tmp_path)
    assert imported == {"torch": True, "transformers": True, "IPython": False, "ipywidgets": False}
