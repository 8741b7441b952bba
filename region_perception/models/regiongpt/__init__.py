"""RegionGPT (arXiv 2403.02330) on transformers' LLaVA: refined vision features, mask pooling,
``<region>`` tokens and task-guided prompts. The authors released no code or weights."""

from .configuration_regiongpt import RegionGPTConfig
from .modeling_regiongpt import RegionGPTForConditionalGeneration, RegionRefiner, mask_pool

__all__ = ["RegionGPTConfig", "RegionGPTForConditionalGeneration", "RegionRefiner", "mask_pool"]
