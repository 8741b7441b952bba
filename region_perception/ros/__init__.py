"""ROS 2 adapters over the model core: node, demo camera, query tool, conversions."""
