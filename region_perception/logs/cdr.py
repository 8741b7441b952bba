"""Read a stamped message's ``header.stamp`` straight from its CDR bytes.

Every ``std_msgs/Header``-first message (Image, CompressedImage, RegionQuery,
RegionResult) starts with the stamp after the 4-byte encapsulation header, so a recorder
or a log scan can key frames by stamp without deserialising megabytes of pixels.
"""

from __future__ import annotations

import struct


def header_stamp_ns(data: bytes) -> int:
    """``header.stamp`` in nanoseconds of a CDR message whose first field is a Header."""
    if len(data) < 12:
        raise ValueError(f"CDR message of {len(data)} bytes is too short for a header stamp")
    little = data[1] & 1  # encapsulation kind: odd = little-endian
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec
