"""RegionGPT's model: LLaVA plus feature refinement, mask pooling and ``<region>`` substitution.

The vision tower's patch grid (24x24 at 336 px) goes through two stride-2 deconvolutions
to a 4x finer map (96x96). Image tokens are that map average-pooled back to the patch
grid; a region's token is the average of the map inside its mask. Both go through LLaVA's
one projector. The refinement is residual with its last deconvolution zero at
initialisation, so a LLaVA checkpoint loaded as RegionGPT starts with exactly LLaVA's
image tokens (and its answers) until the refinement is trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from ..conv_stem import install_conv_stem
from .configuration_regiongpt import RegionGPTConfig

# LLaVA checkpoints (llava-hf) keep legacy key names that transformers renames by model_type;
# RegionGPT reads and writes its LLaVA part under the same names
register_checkpoint_conversion_mapping(
    RegionGPTConfig.model_type, get_checkpoint_conversion_mapping("llava") or [], overwrite=True
)


class RegionRefiner(nn.Module):
    """Two 2x2 stride-2 deconvolutions (grid -> 4x grid), added to the nearest-upsampled grid."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose2d(channels, hidden, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.up2 = nn.ConvTranspose2d(hidden, channels, kernel_size=2, stride=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.up1.weight, a=5**0.5)
        nn.init.zeros_(self.up1.bias)
        nn.init.zeros_(self.up2.weight)  # untrained refinement = identity after pooling back
        nn.init.zeros_(self.up2.bias)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, g, g) -> (B, C, 4g, 4g)."""
        base = F.interpolate(grid, scale_factor=4, mode="nearest")
        return base + self.up2(self.act(self.up1(grid)))


def mask_pool(feature_map: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average of ``feature_map`` (C, H, W) inside each mask (R, h, w) -> (R, C).

    Masks of another size are area-resized to the map first, so a map cell counts with
    the fraction of its pixels inside the region; a mask already at the map's size is a
    plain masked average.
    """
    c, h, w = feature_map.shape
    weights = masks.to(feature_map.dtype)
    if weights.shape[-2:] != (h, w):
        weights = F.interpolate(weights[:, None], size=(h, w), mode="area")[:, 0]
    weights = weights.reshape(weights.shape[0], -1)
    sums = weights @ feature_map.reshape(c, -1).T
    return sums / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)


class RegionGPTForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA whose prompt may hold ``<region>`` placeholders, each replaced by a mask-pooled feature."""

    config_class = RegionGPTConfig

    def __init__(self, config: RegionGPTConfig) -> None:
        super().__init__(config)
        channels = config.vision_config.hidden_size
        self.refiner = RegionRefiner(channels, getattr(config, "refine_channels", 0) or channels)
        self.post_init()
        # the toy's CLIP tower opens with a convolution stem (vision_config.conv_stem); released towers do not
        install_conv_stem(self.model.vision_tower.embeddings, config.vision_config)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        refiner = getattr(self, "refiner", None)
        if isinstance(module, RegionRefiner) or (refiner is not None and module in (refiner.up1, refiner.up2)):
            refiner.reset_parameters()  # missing from a LLaVA checkpoint: fresh, zero residual
        else:
            super()._init_weights(module)

    # -- the split stages ---------------------------------------------------------------------
    def patch_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The vision tower's selected layer as LLaVA selects it: (B, g*g, C) patches, and CLS if kept."""
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("RegionGPT refines one vision feature layer; this config selects several")
        out = self.model.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[layer]
        return hidden[:, 1:], (hidden[:, :1] if self.config.vision_feature_select_strategy == "full" else None)

    def refine(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, g*g, C) patch features -> (B, C, 4g, 4g) refined map."""
        b, n, c = patches.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"{n} patch features are not a square grid")
        return self.refiner(patches.transpose(1, 2).reshape(b, c, g, g))

    def image_tokens(self, refined: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """The refined map pooled back to the patch grid, projected: (B, tokens, D)."""
        g = refined.shape[-1] // 4
        pooled = F.adaptive_avg_pool2d(refined, g).flatten(2).transpose(1, 2)
        if cls is not None:
            pooled = torch.cat([cls, pooled], dim=1)
        return self.model.multi_modal_projector(pooled)

    def region_tokens(self, refined_map: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One projected token per mask (R, D), pooled from one image's refined map (C, H, W)."""
        return self.model.multi_modal_projector(mask_pool(refined_map, masks))

    def embed(
        self,
        input_ids: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        region_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image and region placeholders replaced, in order."""
        table = self.get_input_embeddings()
        specials = (input_ids == self.config.image_token_index) | (input_ids == self.config.region_token_index)
        safe = input_ids.masked_fill(specials | (input_ids >= table.num_embeddings), 0)
        embeds = table(safe)
        for token_id, values in (
            (self.config.image_token_index, image_tokens),
            (self.config.region_token_index, region_tokens),
        ):
            slots = input_ids == token_id
            count = int(slots.sum())
            given = 0 if values is None else values.reshape(-1, embeds.shape[-1]).shape[0]
            if count != given:
                raise ValueError(f"{count} placeholders of token {token_id} but {given} features for them")
            if count:
                embeds = embeds.masked_scatter(slots[..., None], values.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        return embeds

    # -- the unsplit forward ------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        region_masks: Sequence[torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ):
        """LLaVA's forward; with ``pixel_values``, image and ``region_masks[b]`` (R_b, h, w) tokens filled in."""
        if pixel_values is not None:
            if inputs_embeds is not None:
                raise ValueError("give input_ids with pixel_values, not inputs_embeds")
            patches, cls = self.patch_features(pixel_values)
            refined = self.refine(patches)
            images = self.image_tokens(refined, cls)
            regions = None
            if region_masks is not None:
                pooled = [self.region_tokens(refined[b], m) for b, m in enumerate(region_masks) if len(m)]
                regions = torch.cat(pooled) if pooled else None
            inputs_embeds = self.embed(input_ids, images, regions)
            input_ids = None
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels, **kwargs
        )
