"""Floor 1: regions, their text form, proposal filtering and depth geometry (numpy and OpenCV only;
no model, no ROS)."""
