"""Start the region_perception node with config/default.yaml (and rviz on request).

    ros2 launch region_perception bringup.launch.py model:=florence-community/Florence-2-base \
        device:=cuda image:=/camera/color/image_raw use_overlay:=true use_rviz:=true \
        depth:=/camera/aligned_depth_to_color/image_raw \
        camera_info:=/camera/aligned_depth_to_color/camera_info      # 3D positions (optional)

Without a ROS distribution (no `ros2 launch`), the same thing is:

    region-perception-node --ros-args --params-file config/default.yaml \
        -p model:=... -p device:=cuda -p use_overlay:=true -r image:=/camera/color/image_raw \
        -p depth_topic:=depth/image_raw -r depth/image_raw:=/camera/aligned_depth_to_color/image_raw \
        -r depth/camera_info:=/camera/aligned_depth_to_color/camera_info
"""

import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

OVERRIDABLE = ("model", "model_revision", "device", "use_overlay")


def _node(context):
    params_file = LaunchConfiguration("params_file").perform(context)
    overrides = {}
    for name in OVERRIDABLE:
        value = LaunchConfiguration(name).perform(context)
        if value != "":  # empty: keep the parameters file's value
            overrides[name] = yaml.safe_load(value) if name == "use_overlay" else value
    image = LaunchConfiguration("image").perform(context)
    remappings = [("image", image), ("image/compressed", f"{image}/compressed")]
    depth = LaunchConfiguration("depth").perform(context)
    if depth:  # 3D positions: the node reads depth/image_raw and depth/camera_info, remapped here
        overrides["depth_topic"] = "depth/image_raw"
        overrides["camera_info_topic"] = "depth/camera_info"
        camera_info = LaunchConfiguration("camera_info").perform(context) or f"{depth.rsplit('/', 1)[0]}/camera_info"
        remappings += [("depth/image_raw", depth), ("depth/camera_info", camera_info)]
    return [
        Node(
            package="region_perception",
            executable="region_perception_node",
            name="region_perception",
            parameters=[params_file, overrides],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("region_perception")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([share, "config", "default.yaml"]),
                description="node parameters (YAML)",
            ),
            DeclareLaunchArgument("model", default_value="", description="model name/id/path (default: params file)"),
            DeclareLaunchArgument(
                "model_revision", default_value="", description="hub model branch, tag or commit (default: params file)"
            ),
            DeclareLaunchArgument("device", default_value="", description="auto | cuda | cpu (default: params file)"),
            DeclareLaunchArgument("image", default_value="image", description="camera image topic"),
            DeclareLaunchArgument("use_overlay", default_value="", description="true | false (default: params file)"),
            DeclareLaunchArgument(
                "depth", default_value="", description="depth image aligned to the colour image ('' = no 3D)"
            ),
            DeclareLaunchArgument(
                "camera_info", default_value="", description="its CameraInfo (default: camera_info beside depth)"
            ),
            DeclareLaunchArgument("use_rviz", default_value="false", description="start rviz with the overlay"),
            OpaqueFunction(function=_node),
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", PathJoinSubstitution([share, "rviz", "region_perception.rviz"])],
                condition=IfCondition(LaunchConfiguration("use_rviz")),
            ),
        ]
    )
