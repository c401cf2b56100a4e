"""Two small speech models for demos and tests of non-LLM models: built offline, random weights.

Real transformers architectures (wav2vec2 CTC for speech recognition, VITS
for speech synthesis) created from a config, so loading, memory, priority
tiers and eviction behave as with trained ones; their outputs are noise (no
trained speech weights can be had offline), so the notebooks show shapes,
never transcripts or audio. Use them as loaders::

    mgr.register("asr", loader="jupyter_llm_manager.models.speech:load_tiny_asr", kind="asr")

``options: {hidden_size: N, layers: N}`` in the spec change their size.
"""

from __future__ import annotations

from typing import Any

from ..config.spec import ModelSpec
from ..support.heavy_imports import heavy

__all__ = ["load_tiny_asr", "load_tiny_tts"]


def _size(spec: ModelSpec, hidden: int, layers: int) -> tuple[int, int]:
    options = spec.options or {}
    return int(options.get("hidden_size", hidden)), int(options.get("layers", layers))


def load_tiny_asr(spec: ModelSpec) -> Any:
    """A wav2vec2 CTC model (speech → character logits), random weights, in eval mode."""
    torch, transformers = heavy("torch"), heavy("transformers")
    hidden, layers = _size(spec, 512, 6)
    config = transformers.Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8, intermediate_size=4 * hidden,
        conv_dim=(128, 128, 128), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), vocab_size=32,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.Wav2Vec2ForCTC(config).eval()


def load_tiny_tts(spec: ModelSpec) -> Any:
    """A VITS model (character ids → waveform), random weights, in eval mode."""
    torch, transformers = heavy("torch"), heavy("transformers")
    hidden, layers = _size(spec, 384, 6)
    config = transformers.VitsConfig(
        vocab_size=40, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, ffn_dim=4 * hidden,
        flow_size=hidden // 2, spectrogram_bins=129, upsample_initial_channel=hidden,
        upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2,
        posterior_encoder_num_wavenet_layers=2, duration_predictor_num_flows=2,
        duration_predictor_filter_channels=hidden // 2, depth_separable_num_layers=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.VitsModel(config).eval()
