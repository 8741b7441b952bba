"""Floor 0: what every floor may use. Timings, status codes, the local ROS environment and the
image-feature cache; nothing here imports anything else of the package."""
