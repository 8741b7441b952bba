"""Floor 5: what turns the engine into a service: the query processor (queue, batching,
deadlines), the frame buffer, depth frames, overlays, the parameters file and the ROS-free image
decoders. The ROS node, the CLI and ``run-log`` sit above and feed it."""
