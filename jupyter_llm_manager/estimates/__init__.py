"""How much memory a model will take, read from metadata without loading weights.

``checkpoints``: a transformers checkpoint (safetensors headers, config.json,
the KV cache, the overhead) and the cache of estimates; ``safetensors``: the
bounded header reader; ``adapters``: LoRA adapter files, their weights and
whether their config agrees with them; ``learned``: the corrections past loads
teach (measured against estimated, per kind of load).
"""

from .adapters import adapter_folder, adapter_slice, check_adapter_files, read_adapter_config, with_adapter
from .checkpoints import OVERHEAD_RULE, EstimateCache, estimate_checkpoint, remote_estimate
from .learned import Lesson, corrected, corrections, lesson, record_load
from .safetensors import checkpoint_shapes, read_safetensors_header

__all__ = ["OVERHEAD_RULE", "EstimateCache", "Lesson", "adapter_folder", "adapter_slice", "check_adapter_files",
           "checkpoint_shapes", "corrected", "corrections", "estimate_checkpoint", "lesson", "read_adapter_config",
           "read_safetensors_header", "record_load", "remote_estimate", "with_adapter"]
