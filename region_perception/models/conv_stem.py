"""An early-convolution stem for a small ViT: the toys' vision towers (RegionVLM's InstructBLIP ViT, RegionGPT's CLIP).

Why: a ViT's single 16-pixel patch embedding must learn a shape's outline inside one cell wherever the
shape sits in it; a small tower trained in minutes does not (toy-vision pre-training: ~70 % shape
accuracy). Four 3x3 stride-2 convolutions before the transformer learn it (~97 %). transformers always
builds ``embeddings.patch_embedding`` as one strided ``Conv2d`` with no switch for another, so the model
classes that own these towers swap it in one place (:func:`install_conv_stem`), keyed by
``vision_config.conv_stem`` (saved in config.json): the builders and every ``from_pretrained`` build the
same module, so its weights load natively. Released checkpoints have no such key and load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvStem(nn.Module):
    """Four 3x3 stride-2 convolutions (each with GroupNorm and GELU), then a 1x1 to the hidden size.

    A norm without running statistics (GroupNorm), so a frozen tower behaves the same in train and
    eval mode. The output is ``(B, hidden, H/16, W/16)``, what the strided patch conv gave.
    """

    def __init__(self, hidden: int, widths: tuple[int, ...] = (32, 64, 96, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.GELU()]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, hidden, 1)

    @property
    def weight(self) -> torch.Tensor:
        """The embeddings read ``patch_embedding.weight.dtype`` to cast the pixels."""
        return self.proj.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(pixels))


def stem_widths(vision_config) -> tuple[int, ...] | None:
    """The stem's widths from the config (``conv_stem``: true or a list), None for a plain patch conv."""
    spec = getattr(vision_config, "conv_stem", None)
    if not spec:
        return None
    widths = tuple(int(w) for w in spec) if isinstance(spec, (list, tuple)) else (32, 64, 96, 128)
    if 2 ** len(widths) != int(vision_config.patch_size):
        raise ValueError(f"conv_stem {list(widths)} downsamples {2 ** len(widths)}x, patch_size is "
                         f"{vision_config.patch_size}")
    return widths


def install_conv_stem(embeddings: nn.Module, vision_config) -> bool:
    """Replace ``embeddings.patch_embedding`` by a :class:`ConvStem` where the config asks for one."""
    widths = stem_widths(vision_config)
    if widths is None:
        return False
    stem = ConvStem(vision_config.hidden_size, widths)
    with torch.no_grad():
        for module in stem.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
    embeddings.patch_embedding = stem
    return True
