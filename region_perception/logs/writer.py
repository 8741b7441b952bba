"""Write an MCAP log of CDR messages with their ROS 2 schemas, within a size or duration limit.

``path`` is a ``.mcap`` file, or a directory that becomes a ROS 2 bag (the MCAP file plus
rosbag2's ``metadata.yaml``, written on close). The bytes are written as received (the
middleware's own CDR), each channel with the ``ros2msg`` schema built from the ``.msg``
files, so ``ros2 bag info/play``, Foxglove and ``rosbags`` open the file. Limits bound
the disk a long run can take: once the next message would pass ``max_bytes`` (or the log
would span more than ``max_duration_s``), nothing more is written and
:attr:`McapLogWriter.full` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from . import LogError
from .schemas import msgdef

# rosbag2 and Foxglove read ROS 2 messages as encoding "cdr" with "ros2msg" schemas
MESSAGE_ENCODING = "cdr"
SCHEMA_ENCODING = "ros2msg"


class McapLogWriter:
    """``open``/``write``/``close``; channels are registered on first use of a topic."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 0,
        max_duration_s: float = 0.0,
        overwrite: bool = False,
        profile: str = "ros2",
    ) -> None:
        from mcap.writer import Writer

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise LogError(f"{self.path}: already exists (remove it or allow overwriting)")
        self.bag_dir: Path | None = None
        self.file_path = self.path
        if self.path.suffix.lower() != ".mcap":  # a bag directory
            if self.path.exists() and not self.path.is_dir():
                raise LogError(f"{self.path}: not a directory (a bag output) nor a .mcap file")
            self.bag_dir = self.path
            self.file_path = self.path / f"{self.path.name}_0.mcap"
        self.file_path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.max_duration_ns = int(max_duration_s * 1e9)
        self._file: IO[bytes] = self.file_path.open("wb")
        self._writer = Writer(self._file)
        self._writer.start(profile=profile, library="region_perception")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self.written = 0  # messages
        self.bytes = 0  # message payload bytes
        self.counts: dict[str, int] = {}
        self.full = ""  # why writing stopped ("" while not full)
        self.first_ns: int | None = None
        self._sequence = 0
        self.last_ns = 0
        self.types: dict[str, str] = {}  # topic -> type

    def _channel(self, topic: str, msgtype: str) -> int:
        cid = self._channels.get(topic)
        if cid is None:
            sid = self._schemas.get(msgtype)
            if sid is None:
                sid = self._writer.register_schema(msgtype, SCHEMA_ENCODING, msgdef(msgtype).encode())
                self._schemas[msgtype] = sid
            cid = self._writer.register_channel(topic, MESSAGE_ENCODING, sid)
            self._channels[topic] = cid
            self.types[topic] = msgtype
        return cid

    def write(self, topic: str, msgtype: str, data: bytes, log_time_ns: int, publish_time_ns: int = 0) -> bool:
        """Append one message; False (and nothing written) once a limit is reached."""
        if self.full:
            return False
        if self.first_ns is None:
            self.first_ns = log_time_ns
        if self.max_duration_ns and log_time_ns - self.first_ns > self.max_duration_ns:
            self.full = f"duration limit {self.max_duration_ns / 1e9:g} s reached"
            return False
        if self.max_bytes and self.bytes + len(data) > self.max_bytes:
            self.full = f"size limit {self.max_bytes} bytes reached"
            return False
        cid = self._channel(topic, msgtype)
        self._sequence += 1
        self._writer.add_message(
            cid,
            log_time=int(log_time_ns),
            data=bytes(data),
            publish_time=int(publish_time_ns or log_time_ns),
            sequence=self._sequence,
        )
        self.written += 1
        self.bytes += len(data)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.first_ns = min(self.first_ns, log_time_ns)
        self.last_ns = max(self.last_ns, log_time_ns)
        return True

    def close(self) -> None:
        if self._file.closed:
            return
        self._writer.finish()
        self._file.close()
        if self.bag_dir is not None:
            (self.bag_dir / "metadata.yaml").write_text(self.metadata_yaml())

    def metadata_yaml(self) -> str:
        """rosbag2's ``metadata.yaml`` (version 9) describing the one MCAP file of the bag."""
        import yaml

        start = self.first_ns or 0
        duration = max(0, self.last_ns - start) if self.written else 0
        topics = [
            {
                "topic_metadata": {
                    "name": topic,
                    "type": msgtype,
                    "serialization_format": MESSAGE_ENCODING,
                    "offered_qos_profiles": [],
                    "type_description_hash": "",
                },
                "message_count": self.counts.get(topic, 0),
            }
            for topic, msgtype in self.types.items()
        ]
        info = {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": duration},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": self.written,
            "topics_with_message_count": topics,
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [self.file_path.name],
            "files": [
                {
                    "path": self.file_path.name,
                    "starting_time": {"nanoseconds_since_epoch": start},
                    "duration": {"nanoseconds": duration},
                    "message_count": self.written,
                }
            ],
            "custom_data": {},
            "ros_distro": "kilted",
        }
        return yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False)

    def __enter__(self) -> McapLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
