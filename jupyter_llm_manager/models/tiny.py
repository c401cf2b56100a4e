"""Tiny real checkpoints built offline in seconds: random weights, a trained tokenizer.

They are genuine Llama-style transformers folders (config.json, safetensors,
tokenizer.json with a chat template), so they load through exactly the path a
Hub model takes. Their answers are noise. Tests, the benchmark and the demo
models use them; nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LARGE", "SMALL", "TinyModelShape", "build_tiny_model"]

log = logging.getLogger(__name__)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token from the ones before it.
Notebooks mix code, text and results. Memory on a GPU is precious: load a model, use it, then unload it.
Hello! How are you today? I am fine, thank you. What would you like to know about models, memory or Python?
def add(a, b):
    return a + b
for i in range(10):
    print(i * i)
{"name": "tiny", "layers": 2, "heads": 4}
Transformers turn tokens into vectors, mix them with attention, and turn them back into tokens.
"""
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
_STAMP = "tiny_model.json"


@dataclass(frozen=True)
class TinyModelShape:
    """Sizes of a tiny Llama-style model."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    vocab_size: int = 384
    seed: int = 0


SMALL = TinyModelShape()
LARGE = TinyModelShape(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, max_position_embeddings=2048, vocab_size=512, seed=1)


def build_tiny_model(folder: str | os.PathLike, shape: TinyModelShape = SMALL, *, dtype: str = "float32") -> Path:
    """Build (or reuse, when already built with the same shape) a tiny checkpoint in ``folder``.

    The folder is written next to its final place and renamed into it, so an
    interrupted build never leaves a half-written model behind.
    """
    folder = Path(folder)
    stamp = {**asdict(shape), "dtype": dtype}
    if (folder / _STAMP).exists() and json.loads((folder / _STAMP).read_text()) == stamp:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_checkpoint(staging, shape, dtype)
        (staging / _STAMP).write_text(json.dumps(stamp))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("built a tiny model in %s", folder)
    return folder


def _write_checkpoint(folder: Path, shape: TinyModelShape, dtype: str) -> None:
    from ..backends.transformers.support import import_torch, import_transformers, library_progress_off

    torch, transformers = import_torch(), import_transformers()
    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
    tokenizer = _train_tokenizer(shape.vocab_size)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(shape.seed)
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.do_sample = False
    with library_progress_off():  # transformers draws a "Writing model shards" bar (a widget in a notebook)
        model.save_pretrained(folder)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.chat_template = _CHAT_TEMPLATE
    return fast
