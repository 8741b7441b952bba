"""Generic ROS message <-> plain Python conversion (rosidl_runtime_py is not on PyPI).

Used to print results as JSON and to compare messages field by field across processes.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def msg_to_dict(msg: Any) -> Any:
    """Recursively turn a generated ROS message into dicts, lists and scalars.

    Byte arrays (``uint8[]`` such as ``sensor_msgs/Image.data``) become base64 strings so
    that the result is JSON-serialisable and compact.
    """
    if hasattr(msg, "get_fields_and_field_types"):
        return {name: msg_to_dict(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
    if isinstance(msg, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(msg)).decode("ascii")
    if isinstance(msg, np.ndarray):
        if msg.dtype == np.uint8:
            return base64.b64encode(msg.tobytes()).decode("ascii")
        return msg.tolist()
    if isinstance(msg, (list, tuple)) or type(msg).__name__ == "array":
        if type(msg).__name__ == "array" and getattr(msg, "typecode", "") == "B":
            return base64.b64encode(msg.tobytes()).decode("ascii")
        return [msg_to_dict(v) for v in msg]
    if isinstance(msg, (np.floating, np.integer)):
        return msg.item()
    return msg
