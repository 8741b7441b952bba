"""region_perception: ask a vision-language model about parts of a camera image.

The model and task code (regions, engine, backends, CLI) imports without rclpy; the ROS
node in ``region_perception.ros`` is a thin adapter over it. The folders are floors, each
importing only from the floors below: ``docs/architecture.md``.
"""

import pkgutil

# The generated ROS interfaces (``region_perception.msg`` / ``.srv``) are installed into
# the ROS prefix's site-packages by CMake, while this code may be installed elsewhere
# (an editable pip install). Let the package span both directories.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
