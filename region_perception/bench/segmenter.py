"""The segmenter's cost per frame: its image embedding (once a frame), then clicks, boxes and proposals on it.

Why: a click's object mask, a box's mask and REFER's proposals all read one image embedding per frame
(kept in the feature cache); this section shows that the embedding is computed once whatever asks, and
what each prompt costs after it, on the synthetic camera's scenes at the camera's 640x480.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import cv2
import numpy as np

from .common import Figure, timed

EMBEDDING_KIND = "sam_embedding"  # models.sam.SegmentAnythingSegmenter's feature-cache entry


def camera_scene(width: int = 640, height: int = 480, seed: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """A synthetic-camera scene scaled to the camera's size, with its objects' masks at that size."""
    from ..datasets.synthetic_camera import synthetic_frame

    image, objects = synthetic_frame(seed, 0)
    frame = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    masks = [cv2.resize(o.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
             for o in objects]
    return frame, [m for m in masks if m.any()]


def bench_segmenter(name: str = "toy-sam", backend: str = "sam", runs: int = 5) -> dict[str, Any]:
    """Figures for segmenter ``name`` on CPU: embedding per frame, a click, a box and the proposals on a
    frame already embedded, and how many embeddings one frame's click + box + proposals computed."""
    import torch

    from ..common.feature_cache import FeatureCache
    from ..datasets.synthetic_camera import inside_point
    from ..evaluation.segment import box_of
    from ..models.loading import load_segmenter

    cache = FeatureCache(4)
    segmenter = load_segmenter(name, backend, cache, torch.device("cpu"))
    frame, masks = camera_scene()
    click = np.array([inside_point(masks[0])], dtype=np.float64)
    box = box_of(masks[0])
    counter = iter(range(10**9))

    def embed_new_frame() -> None:  # a new frame key each call: the embedding is computed, not looked up
        segmenter.segment(f"bench-segmenter:{next(counter)}", frame, points=click)

    embed_s, _, _ = timed(embed_new_frame, runs)
    key = "bench-segmenter:cached"
    segmenter.segment(key, frame, points=click)
    click_s, _, _ = timed(lambda: segmenter.segment(key, frame, points=click), runs)
    box_s, _, _ = timed(lambda: segmenter.segment(key, frame, box=box), runs)
    proposals_s, _, found = timed(lambda: segmenter.propose(key, frame), max(1, runs // 2))

    once = FeatureCache(4)
    counted = load_segmenter(name, backend, once, torch.device("cpu"))
    counted.segment("one-frame", frame, points=click)
    counted.segment("one-frame", frame, box=box)
    counted.propose("one-frame", frame)
    computed = once.misses  # every miss is an embedding computed (the segmenter keeps nothing else there)
    embed_ms = round(embed_s * 1000 - click_s * 1000, 1)
    figures = [
        Figure("segmenter embedding per frame (640x480)", embed_ms, "ms", "",
               None, {"first click on a new frame ms": round(embed_s * 1000, 1)}),
        Figure("click on an embedded frame", round(click_s * 1000, 2), "ms"),
        Figure("box on an embedded frame", round(box_s * 1000, 2), "ms"),
        Figure("proposals on an embedded frame", round(proposals_s * 1000, 1), "ms", "", None,
               {"proposals": len(found.masks)}),
        Figure("embeddings computed for a click, a box and the proposals of one frame", computed, "",
               "1 (once a frame)", computed == 1),
    ]
    notes = ["- The segmenter section: the model's own weights on CPU (toy-sam: trained on synthetic shapes, 128 px "
             "input); a frame of any size is resized to the segmenter's input, so its cost does not grow with the "
             "camera's resolution. The embedding figure is the first click on a new frame less a click on an "
             "embedded one."]
    weights = " (RANDOM WEIGHTS)" if segmenter.weights_random else ""
    return {"model": f"segmenter {name}{weights}", "title": f"Segmenter: {name}{weights}",
            "figures": [asdict(f) for f in figures], "notes": notes}
