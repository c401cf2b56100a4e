"""LoRA adapters the tests make: a PEFT folder for a tiny model, a GGUF LoRA file for a llama.cpp model."""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_lora", "write_gguf_lora"]


def make_lora(base: Path, folder: Path, seed: int, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A random LoRA adapter for ``base`` (init_lora_weights=False: it changes the output), saved to ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(folder)
    return folder


def write_gguf_lora(path: Path, base: Path, *, seed: int = 1, rank: int = 4, arch: str = "llama",
                    kind: str = "adapter", adapter_type: str = "lora", shape_of=None, rank_b: int | None = None,
                    extra: tuple[str, ...] = ()) -> Path:
    """A random GGUF LoRA on the attention q and v projections of the GGUF model ``base``, as
    convert_lora_to_gguf.py writes one.

    ``shape_of(in, out)`` -> ``(in, out)`` gives the sizes the pair is built for (a wrong size on purpose);
    ``rank_b``: another rank for every ``lora_b`` (a broken pair on purpose); ``extra``: names of small
    tensors that are not LoRA halves, added to the file (llama.cpp crashes on them).
    """
    import gguf
    import numpy as np

    from jupyter_llm_manager.gguf.files import read_gguf_shapes

    shapes = read_gguf_shapes(base)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(kind)
    writer.add_string("adapter.type", adapter_type)
    writer.add_float32("adapter.lora.alpha", 2.0 * rank)
    layers = sum(1 for name in shapes if name.endswith(".attn_q.weight"))
    for layer in range(layers):
        for part in ("attn_q", "attn_v"):
            size_in, size_out = (shape_of or (lambda i, o: (i, o)))(*shapes[f"blk.{layer}.{part}.weight"])
            # numpy order is ggml's reversed: lora_a is [in, rank] in ggml, lora_b is [rank, out]
            writer.add_tensor(f"blk.{layer}.{part}.weight.lora_a",
                              (rng.standard_normal((rank, size_in)) * 0.05).astype(np.float32))
            writer.add_tensor(f"blk.{layer}.{part}.weight.lora_b",
                              (rng.standard_normal((size_out, rank_b or rank)) * 0.05).astype(np.float32))
    for name in extra:
        writer.add_tensor(name, np.zeros((3, 7), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
