"""Following one object from frame to frame without the language model on every frame.

``propagate``: optical flow moves the last mask, the segmenter (or a colour model) redraws it;
``tracker``: the state machine (tracking / occluded / lost / reacquired) with re-checks injected
from outside; ``appearance``: the colour model used as the segmenter-free baseline and as a
cheap detector of candidates for re-acquisition. No rclpy, no engine: plain numpy and OpenCV.
"""

from .appearance import ColourModel, colour_recheck
from .propagate import Propagation, propagate
from .tracker import Recheck, RecheckResult, Track, TrackConfig, TrackState, TrackUpdate

__all__ = [
    "ColourModel", "Propagation", "Recheck", "RecheckResult", "Track", "TrackConfig", "TrackState", "TrackUpdate",
    "colour_recheck", "propagate",
]
