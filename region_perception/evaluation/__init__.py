"""Answer quality by the seeds' protocols: RIS / comprehension, classification, region captions (no rclpy)."""

from .metrics import caption_scores, coco_map, intersection_union, iou, normalize_label
from .runner import TASKS, evaluate, items_for, summarize, summarize_file
from .sharding import merge_shards, rank_path, rank_world, read_rows, shard

__all__ = [
    "TASKS",
    "caption_scores",
    "coco_map",
    "evaluate",
    "intersection_union",
    "iou",
    "items_for",
    "merge_shards",
    "normalize_label",
    "rank_path",
    "rank_world",
    "read_rows",
    "shard",
    "summarize",
    "summarize_file",
]
