"""Testing aids that are part of the package so a user can run them by hand (no rclpy here)."""
