"""The models: Florence-2, RegionVLM and RegionGPT backends, SAM, the registry, one resolve-and-load path."""
