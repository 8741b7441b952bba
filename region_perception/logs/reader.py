"""Read a robot log: an MCAP file, or a ROS 2 bag directory (``metadata.yaml`` + .mcap or .db3).

Messages come out as CDR bytes with their type and log time; :meth:`LogReader.decode`
turns them into objects with the message's fields (``rosbags``' typestore, the log's own
schemas registered for types it does not know). A ``.mcap`` file is read with the ``mcap``
library, a bag directory with ``rosbags``: two independent readers of the same format.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import LogError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


def is_depth_topic(topic: str) -> bool:
    """A depth image topic by its name (``.../depth/image_raw``, ``aligned_depth_to_color``, ...)."""
    return "depth" in topic.lower()


@dataclass
class LogMessage:
    topic: str
    msgtype: str  # pkg/msg/Type
    log_time_ns: int
    data: bytes  # CDR, as on the wire


@dataclass
class TopicInfo:
    msgtype: str
    count: int
    msgdef: str = ""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


class LogReader:
    """One log, opened and checked; iterate its messages once or many times."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise LogError(f"{self.path}: no such file or directory")
        if self.path.is_dir():
            if not (self.path / "metadata.yaml").is_file():
                found = ", ".join(sorted(p.name for p in self.path.iterdir())[:5]) or "nothing"
                raise LogError(f"{self.path}: not a ROS 2 bag (no metadata.yaml; found {found})")
            self.kind = "bag"
        elif self.path.suffix.lower() == ".mcap":
            self.kind = "mcap"
        else:
            raise LogError(f"{self.path}: not a log (expected a .mcap file or a ROS 2 bag directory)")
        self._topics = self._read_topics()
        self._store = None

    # -- summary --------------------------------------------------------------------------------
    def _read_topics(self) -> dict[str, TopicInfo]:
        if self.kind == "bag":
            from rosbags.rosbag2 import Reader, ReaderError

            try:
                with Reader(self.path) as reader:
                    topics: dict[str, TopicInfo] = {}
                    for c in reader.connections:
                        info = topics.setdefault(c.topic, TopicInfo(c.msgtype, 0, _msgdef_text(c)))
                        info.count += c.msgcount
                    return topics
            except ReaderError as exc:
                raise LogError(f"{self.path}: unreadable ROS 2 bag ({exc})") from None
        return self._mcap_topics()

    def _mcap_topics(self) -> dict[str, TopicInfo]:
        from mcap.exceptions import McapError
        from mcap.reader import make_reader

        with self.path.open("rb") as f:
            head = f.read(8)
            if head[:5] != b"\x89MCAP":
                raise LogError(f"{self.path}: not an MCAP file (starts with {head!r})")
            f.seek(0)
            try:
                summary = make_reader(f).get_summary()
            except (McapError, EOFError, ValueError, OSError) as exc:
                summary, error = None, exc
            else:
                error = None
        if summary is None:
            size = self.path.stat().st_size
            why = f": {error}" if error else ""
            raise LogError(f"{self.path}: truncated MCAP (no summary/footer in its {size} bytes{why})")
        counts = summary.statistics.channel_message_counts if summary.statistics else {}
        topics: dict[str, TopicInfo] = {}
        for cid, channel in summary.channels.items():
            schema = summary.schemas.get(channel.schema_id)
            msgtype = schema.name if schema else ""
            text = schema.data.decode() if schema and schema.encoding == "ros2msg" else ""
            info = topics.setdefault(channel.topic, TopicInfo(msgtype, 0, text))
            info.count += counts.get(cid, 0)
        return topics

    def topics(self) -> dict[str, TopicInfo]:
        return dict(self._topics)

    def image_topics(self) -> dict[str, TopicInfo]:
        return {t: i for t, i in self._topics.items() if i.msgtype in IMAGE_TYPES}

    def image_topic(self, topic: str | None = None) -> str:
        """The topic to read frames from: ``topic`` checked, or the log's only/first image topic."""
        images = self.image_topics()
        found = ", ".join(f"{t} ({i.msgtype}, {i.count})" for t, i in self._topics.items()) or "no topics"
        if topic:
            if topic not in self._topics:
                raise LogError(f"{self.path}: no topic {topic!r} (found: {found})")
            if topic not in images:
                raise LogError(f"{self.path}: topic {topic!r} is {self._topics[topic].msgtype}, not an image type")
            return topic
        if not images:
            raise LogError(f"{self.path}: no sensor_msgs/Image or CompressedImage topic (found: {found})")
        # the camera's: not a depth image, nor the node's overlay (a recording holds as many of those)
        colour = {t: i for t, i in images.items() if not is_depth_topic(t) and "overlay" not in t} or images
        return max(colour, key=lambda t: colour[t].count)

    def depth_topic(self, topic: str | None = None) -> str | None:
        """The depth image topic: ``topic`` checked, or the Image topic named like depth (None: none)."""
        if topic:
            if self._topics.get(topic) is None or self._topics[topic].msgtype != "sensor_msgs/msg/Image":
                found = ", ".join(t for t, i in self._topics.items() if i.msgtype == "sensor_msgs/msg/Image")
                found = found or "none"
                raise LogError(f"{self.path}: no sensor_msgs/Image topic {topic!r} for depth (found: {found})")
            return topic
        depth = {t: i for t, i in self._topics.items() if i.msgtype == "sensor_msgs/msg/Image" and is_depth_topic(t)}
        return max(depth, key=lambda t: depth[t].count) if depth else None

    def camera_info_topic(self, topic: str | None = None, beside: str | None = None) -> str | None:
        """The CameraInfo topic: ``topic`` checked, or the one beside ``beside`` (same namespace), or any."""
        infos = [t for t, i in self._topics.items() if i.msgtype == CAMERA_INFO_TYPE]
        if topic:
            if topic not in infos:
                raise LogError(f"{self.path}: no CameraInfo topic {topic!r} (found: {', '.join(infos) or 'none'})")
            return topic
        if beside:
            ns = beside.rsplit("/", 1)[0]
            near = [t for t in infos if t.rsplit("/", 1)[0] == ns]
            if near:
                return near[0]
        return infos[0] if infos else None

    # -- messages ---------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str] | None = None) -> Iterator[LogMessage]:
        """Messages in log-time order (only ``topics`` when given)."""
        wanted = set(topics) if topics is not None else None
        if self.kind == "bag":
            from rosbags.rosbag2 import Reader

            with Reader(self.path) as reader:
                conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
                for conn, t, raw in reader.messages(connections=conns):
                    yield LogMessage(conn.topic, conn.msgtype, int(t), bytes(raw))
            return
        from mcap.exceptions import McapError
        from mcap.reader import make_reader

        with self.path.open("rb") as f:
            try:
                for schema, channel, message in make_reader(f).iter_messages(topics=wanted):
                    yield LogMessage(channel.topic, schema.name if schema else "", message.log_time, message.data)
            except (McapError, EOFError) as exc:
                raise LogError(f"{self.path}: damaged MCAP ({exc})") from None

    def decode(self, message: LogMessage) -> Any:
        """The message as an object with its fields (``header.stamp.sec``, ``data``, ...)."""
        if self._store is None:
            self._store = _typestore()
        if message.msgtype not in self._store.types:
            from rosbags.typesys import get_types_from_msg

            info = self._topics.get(message.topic)
            if info is None or not info.msgdef:
                raise LogError(f"{self.path}: no schema for {message.msgtype} on {message.topic}")
            self._store.register(get_types_from_msg(info.msgdef, message.msgtype))
        return self._store.deserialize_cdr(message.data, message.msgtype)


def _msgdef_text(connection: Any) -> str:
    msgdef = getattr(connection, "msgdef", None)
    return getattr(msgdef, "data", msgdef) or ""


def stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def decode_frame(msg: Any, msgtype: str):
    """RGB uint8 of a decoded Image or CompressedImage (the node's own conversion)."""
    from ..service.image_decoding import compressed_msg_to_rgb, image_msg_to_rgb

    if msgtype.endswith("CompressedImage"):
        rgb = compressed_msg_to_rgb(msg)
    else:
        rgb = image_msg_to_rgb(msg)
    return rgb if rgb.flags.writeable else rgb.copy()  # a view of the read-only CDR buffer otherwise
