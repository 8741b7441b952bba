"""RegionGPT's configuration: LLaVA's (vision tower, projector, language model) plus the region parts."""

from __future__ import annotations

from transformers import AutoConfig, LlavaConfig


class RegionGPTConfig(LlavaConfig):
    """``LlavaConfig`` with the ``<region>`` placeholder id and the refinement module's width.

    A LLaVA checkpoint's config loads into it unchanged (the region fields keep their
    defaults), which is how a user starts RegionGPT from ``llava-hf/llava-1.5-7b-hf``.
    """

    model_type = "regiongpt"
    region_token_index: int = -1  # id of "<region>" in the tokenizer; -1 = not added yet
    refine_channels: int = 0  # hidden width between the two deconvolutions; 0 = the vision tower's width

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        # loaded from a LLaVA config.json, the instance would say "llava": it is RegionGPT now
        # (and its checkpoint keys are renamed as RegionGPT's)
        self.model_type = type(self).model_type


# Known to the Auto classes: AutoProcessor reads a saved RegionGPT's config.json ("regiongpt")
# and would otherwise warn on every load that the model type is unknown.
AutoConfig.register(RegionGPTConfig.model_type, RegionGPTConfig, exist_ok=True)
