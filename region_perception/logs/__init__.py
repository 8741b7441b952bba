"""Robot logs without a ROS graph: read MCAP files and ROS 2 bags, write MCAP, run scripted queries.

Nothing here imports rclpy: messages travel as CDR bytes with their ROS 2 message
definitions (``mcap`` / ``mcap-ros2-support``), and ``rosbags`` reads bag directories.
"""

from __future__ import annotations


class LogError(ValueError):
    """A log that cannot be used as asked: printed as one line (CLI exit status 2)."""
