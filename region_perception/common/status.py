"""Result status codes: the same numbers as ``RegionResult.msg``'s constants."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    OK = 0
    INVALID_QUERY = 1  # the query is malformed: fix it and ask again
    NO_FRAME = 2  # no camera frame yet (and no image sent)
    FRAME_EXPIRED = 3  # the named frame is not (or no longer) buffered
    QUEUE_FULL = 4  # too many queries waiting: retry later
    MODEL_ERROR = 5  # the model failed on this query; the node keeps serving
    TIMEOUT = 6  # the query's deadline passed first
    SHUTTING_DOWN = 7  # the node stopped before answering
    BAD_IMAGE = 8  # the frame could not be decoded


class Task(IntEnum):
    CAPTION = 0
    CLASSIFY = 1
    REFER = 2
    ASK = 3
