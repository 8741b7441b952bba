"""``region_perception.depth3d`` before #23: the depth geometry and the :class:`DepthSource` in one module."""

from ..geometry.depth import (  # noqa: F401
    SUPPORTED_ENCODINGS,
    DepthError,
    DepthSettings,
    Intrinsics,
    Location,
    _region_name,
    depth_array_to_metres,
    depth_msg_to_metres,
    depth_to_metres,
    intrinsics_for_depth,
    locate_mask,
    locate_result,
    metres_to_16uc1,
    no_position,
    synthetic_depth,
    synthetic_intrinsics,
)
from ..service.depth_source import DepthSource, _CameraInfo  # noqa: F401
