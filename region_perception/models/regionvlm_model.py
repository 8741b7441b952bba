"""RegionVLM's model class: InstructBLIP whose ViT may open with an early-convolution stem.

The stem (:mod:`.conv_stem`) is what the toy RegionVLM's tower needs to learn shape; this class installs it
where ``vision_config.conv_stem`` says so, for the toy builder and every loader alike. Released RegionVLM /
InstructBLIP checkpoints have no such key and load unchanged.
"""

from __future__ import annotations

from transformers import InstructBlipForConditionalGeneration

from .conv_stem import install_conv_stem


class RegionVLMForConditionalGeneration(InstructBlipForConditionalGeneration):
    """InstructBLIP (RegionVLM's architecture) with the optional convolution stem of its config."""

    def __init__(self, config) -> None:
        super().__init__(config)
        install_conv_stem(self.vision_model.embeddings, config.vision_config)
