"""ROS 2 message definitions (``ros2msg`` schema text) built from the ``.msg`` files.

MCAP stores each channel's schema as the message's ``.msg`` text followed by every type it
uses, separated by ``=====`` lines and ``MSG: pkg/Type`` headers, the format rosbag2 writes
and that Foxglove, ``ros2 bag`` and ``rosbags`` parse. Building it from the installed
``share/<pkg>/msg`` files (and this repository's ``msg/``) needs no ROS distribution.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

from . import LogError

PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}  # fmt: skip
SEPARATOR = "=" * 80
REPO_MSG = Path(__file__).resolve().parents[2] / "msg"


def _share_dirs() -> list[Path]:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(p) / "share" for p in dict.fromkeys(prefixes)]


def split_type(name: str) -> tuple[str, str]:
    """``sensor_msgs/msg/Image`` or ``sensor_msgs/Image`` -> (``sensor_msgs``, ``Image``)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise LogError(f"message type {name!r}: expected pkg/msg/Type")


@cache
def msg_file_text(package: str, type_name: str) -> str:
    """The ``.msg`` text of one type (this package's from the repository first)."""
    candidates = [REPO_MSG / f"{type_name}.msg"] if package == "region_perception" else []
    candidates += [share / package / "msg" / f"{type_name}.msg" for share in _share_dirs()]
    for path in candidates:
        if path.is_file():
            return path.read_text()
    raise LogError(f"message type {package}/msg/{type_name}: no .msg file (looked in {candidates[0].parent} ...)")


def _field_types(text: str, package: str) -> list[tuple[str, str]]:
    """(package, type) of every non-primitive field of a ``.msg`` text."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        type_token = line.split()[0]  # constants are always primitive: skipped below
        base = type_token.split("[", 1)[0].split("<=", 1)[0]
        if base in PRIMITIVES:
            continue
        if "/" in base:
            found.append(split_type(base))
        elif base == "Header":
            found.append(("std_msgs", "Header"))
        else:
            found.append((package, base))
    return found


def msgdef(type_name: str) -> str:
    """The full ``ros2msg`` schema text of ``type_name`` (``pkg/msg/Type``), dependencies included."""
    package, name = split_type(type_name)
    main = msg_file_text(package, name)
    order: list[tuple[str, str]] = []
    stack = list(reversed(_field_types(main, package)))
    while stack:
        dep = stack.pop()
        if dep in order:
            continue
        order.append(dep)
        stack.extend(reversed(_field_types(msg_file_text(*dep), dep[0])))
    blocks = [main.rstrip("\n")]
    for pkg, typ in order:
        blocks.append(f"{SEPARATOR}\nMSG: {pkg}/{typ}\n{msg_file_text(pkg, typ).rstrip(chr(10))}")
    return "\n".join(blocks) + "\n"
