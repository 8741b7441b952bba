"""The 3D step without ROS: exact geometry on synthetic depth, every bad-depth case, stamps.

Scenes are fronto-parallel objects at known depths over a far background plane, seen by a
640x480 pinhole camera of known K, so every expected position and size is computed here.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from region_perception.common.status import Status, Task
from region_perception.engine import RegionAnswer, TaskResult
from region_perception.geometry.depth import (
    DepthError,
    DepthSettings,
    Intrinsics,
    depth_array_to_metres,
    depth_to_metres,
    intrinsics_for_depth,
    locate_mask,
    metres_to_16uc1,
    synthetic_depth,
    synthetic_intrinsics,
)
from region_perception.geometry.regions import BoxRegion, region_mask
from region_perception.service.depth_source import DepthSource
from region_perception.service.frame_buffer import Frame, FrameBuffer
from region_perception.service.query_processor import QueryProcessor, QuerySpec

from .helpers.waiting import wait_until

W, H = 640, 480
K = synthetic_intrinsics(W, H)
BACKGROUND_M = 6.0


def rect_at(x_m: float, y_m: float, z_m: float, w_m: float, h_m: float, k: Intrinsics = K, size=(H, W)):
    """The mask of a fronto-parallel w x h metre rectangle centred at (x, y, z) in the optical frame."""
    u0 = k.cx + (x_m - w_m / 2) * k.fx / z_m
    u1 = k.cx + (x_m + w_m / 2) * k.fx / z_m
    v0 = k.cy + (y_m - h_m / 2) * k.fy / z_m
    v1 = k.cy + (y_m + h_m / 2) * k.fy / z_m
    vv, uu = np.mgrid[0 : size[0], 0 : size[1]]
    # a pixel is inside when its centre is: the object's metric edges fall between pixel centres
    return (uu >= u0) & (uu <= u1) & (vv >= v0) & (vv <= v1)


def disc_at(x_m: float, y_m: float, z_m: float, r_m: float, k: Intrinsics = K, size=(H, W)):
    vv, uu = np.mgrid[0 : size[0], 0 : size[1]]
    uc, vc = k.cx + x_m * k.fx / z_m, k.cy + y_m * k.fy / z_m
    r = r_m * k.fx / z_m
    return (uu - uc) ** 2 + (vv - vc) ** 2 <= r**2


OBJECTS = [  # (mask, centre, size) at 1, 2 and 3 m
    (rect_at(-0.15, 0.05, 1.0, 0.20, 0.12), (-0.15, 0.05, 1.0), (0.20, 0.12)),
    (disc_at(0.40, -0.10, 2.0, 0.15), (0.40, -0.10, 2.0), (0.30, 0.30)),
    (rect_at(0.0, 0.45, 3.0, 0.60, 0.30), (0.0, 0.45, 3.0), (0.60, 0.30)),
]


def scene_depth(objects=OBJECTS) -> np.ndarray:
    return synthetic_depth((H, W), [(m, c[2]) for m, c, _ in objects], BACKGROUND_M)


@pytest.mark.parametrize("k", range(len(OBJECTS)))
def test_position_within_1cm_and_size_within_10_percent(k):
    mask, centre, size = OBJECTS[k]
    # through the 16UC1 path a camera would use (millimetres)
    depth = depth_array_to_metres(metres_to_16uc1(scene_depth()), 0.001)
    loc = locate_mask(mask, depth, K)
    assert loc.has_position, loc.reason
    assert np.allclose(loc.position, centre, atol=0.01), (loc.position, centre)
    assert loc.size[0] == pytest.approx(size[0], rel=0.10)
    assert loc.size[1] == pytest.approx(size[1], rel=0.10)
    assert loc.size[2] < 0.01  # flat objects
    assert loc.valid_fraction == pytest.approx(1.0)


def test_mask_spilling_onto_far_background_still_gives_the_object():
    import cv2

    mask, centre, size = OBJECTS[1]
    fat = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)  # 4 px over the edge
    assert (scene_depth()[fat] == BACKGROUND_M).sum() > 100  # the mask does touch the background
    loc = locate_mask(fat, scene_depth(), K)
    assert np.allclose(loc.position, centre, atol=0.01)
    assert loc.size[0] == pytest.approx(size[0], rel=0.10)  # the background is not the object's extent
    assert loc.size[2] < 0.01
    # a box region around the object (a third background) gives the object too
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[ys.min() - 6 : ys.max() + 7, xs.min() - 6 : xs.max() + 7] = True
    assert locate_mask(box, scene_depth(), K).position[2] == pytest.approx(2.0, abs=0.01)


def test_depth_of_another_resolution_is_scaled_with_its_intrinsics():
    small = scene_depth()[::2, ::2]  # a 320x240 depth image aligned with the 640x480 colour image
    k_small = intrinsics_for_depth(K, small.shape, (H, W))  # CameraInfo of the colour image, scaled
    assert (k_small.width, k_small.height) == (320, 240)
    for mask, centre, _ in OBJECTS:
        loc = locate_mask(mask, small, k_small)
        assert np.allclose(loc.position, centre, atol=0.01), (loc.position, centre)
    with pytest.raises(DepthError, match="no intrinsics for the depth image's size"):
        intrinsics_for_depth(K, (100, 77), (H, W))


def test_encodings_step_padding_and_refusals():
    metres = np.array([[0.0, 1.5, np.nan], [2.25, 70.0, 0.5]], dtype=np.float32)
    units = metres_to_16uc1(metres)
    padded = np.zeros((2, 4), dtype="<u2")
    padded[:, :3] = units
    got = depth_to_metres("16UC1", 2, 3, 8, padded.tobytes(), False, 0.001)
    assert np.isnan(got[0, 0]) and np.isnan(got[0, 2]) and np.isnan(got[1, 1])  # 0, NaN, beyond uint16 mm
    assert got[0, 1] == pytest.approx(1.5) and got[1, 0] == pytest.approx(2.25)
    big = depth_to_metres("32FC1", 2, 3, 12, metres.astype(">f4").tobytes(), True)
    assert big[1, 1] == pytest.approx(70.0) and np.isnan(big[0, 2])
    with pytest.raises(DepthError, match="rgb8"):
        depth_to_metres("rgb8", 2, 3, 9, bytes(18))
    with pytest.raises(DepthError, match="bytes"):
        depth_to_metres("16UC1", 2, 3, 6, bytes(5))


@pytest.mark.parametrize(
    "depth, reason",
    [
        (np.zeros((H, W), np.float32), "every pixel zero or NaN"),
        (np.full((H, W), np.nan, np.float32), "every pixel zero or NaN"),
        (np.full((H, W), 42.0, np.float32), "outside [0.1, 10] m"),
    ],
)
def test_no_valid_depth_in_the_region(depth, reason):
    loc = locate_mask(OBJECTS[0][0], depth_array_to_metres(depth), K)
    assert not loc.has_position and reason in loc.reason and loc.valid_fraction == 0.0


def test_partly_valid_depth_reports_its_fraction():
    depth = scene_depth()
    mask = OBJECTS[2][0]
    holes = depth.copy()
    holes[np.random.default_rng(0).random(holes.shape) < 0.5] = np.nan  # half the pixels missing
    loc = locate_mask(mask, holes, K)
    assert loc.valid_fraction == pytest.approx(0.5, abs=0.02)
    assert loc.position[2] == pytest.approx(3.0, abs=0.01)


# -- DepthSource: stamps, CameraInfo, notes -------------------------------------------------------


def result_for(masks) -> TaskResult:
    outputs = [RegionAnswer(name=f"r{i}", mask=m) for i, m in enumerate(masks)]
    return TaskResult("caption", outputs, "fake", True, (H, W), {})


def source(**kw) -> DepthSource:
    s = DepthSource(DepthSettings(**kw), depth_topic="depth/image_raw", camera_info_topic="depth/camera_info")
    s.set_camera_info([K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1], W, H, "cam")
    return s


class DepthMsg:
    """Duck-typed sensor_msgs/Image (the source decodes whatever has its fields)."""

    def __init__(self, metres: np.ndarray, encoding: str = "16UC1") -> None:
        arr = metres_to_16uc1(metres) if encoding == "16UC1" else np.asarray(metres, np.float32)
        self.encoding, self.height, self.width = encoding, arr.shape[0], arr.shape[1]
        self.step, self.is_bigendian, self.data = arr.shape[1] * arr.itemsize, 0, arr.tobytes()


def test_source_locates_every_output_and_names_the_frame():
    s = source()
    s.add_depth(1_000_000_000, "cam", DepthMsg(scene_depth()))
    res = result_for([m for m, _, _ in OBJECTS])
    assert s.locate(res, 1_000_000_000, "cam") == "cam"
    for out, (_, centre, _) in zip(res.outputs, OBJECTS, strict=True):
        assert np.allclose(out.location.position, centre, atol=0.01)
    assert res.notes == [] and "depth_3d" in res.timings_ms


@pytest.mark.parametrize(
    "setup, note",
    [
        ("nothing", "no depth frame received yet on 'depth/image_raw'"),
        ("too_old", "ms older than the colour frame"),
        ("too_new", "ms newer than the colour frame"),
        ("encoding", "depth encoding 'rgb8' is not supported"),
        ("no_info", "no CameraInfo received yet on 'depth/camera_info'"),
        ("bad_info", "CameraInfo on 'depth/camera_info' is unusable"),
        ("wrong_size", "no intrinsics for the depth image's size"),
        ("zeros", "every pixel zero or NaN"),
        ("nan", "every pixel zero or NaN"),
        ("far", "outside [0.1, 10] m"),
        ("no_stamp", "the image has no stamp"),
    ],
)
def test_every_bad_depth_case_is_a_note_not_an_error(setup, note):
    s = source(wait_ms=0)
    stamp = 5_000_000_000
    good = DepthMsg(scene_depth())
    if setup == "too_old":
        s.add_depth(stamp - 400_000_000, "cam", good)
    elif setup == "too_new":
        s.add_depth(stamp + 400_000_000, "cam", good)
    elif setup == "encoding":
        msg = DepthMsg(scene_depth())
        msg.encoding = "rgb8"
        s.add_depth(stamp, "cam", msg)
    elif setup == "no_info":
        s = DepthSource(DepthSettings(wait_ms=0), "depth/image_raw", "depth/camera_info")
        s.add_depth(stamp, "cam", good)
    elif setup == "bad_info":
        s.set_camera_info([0.0] * 9, W, H)
        s.add_depth(stamp, "cam", good)
    elif setup == "wrong_size":
        s.add_depth(stamp, "cam", DepthMsg(scene_depth()[:100, :77]))
    elif setup in ("zeros", "nan", "far"):
        value = {"zeros": 0.0, "nan": np.nan, "far": 50.0}[setup]
        s.add_depth(stamp, "cam", DepthMsg(np.full((H, W), value, np.float32), "32FC1"))
    elif setup == "no_stamp":
        s.add_depth(stamp, "cam", good)
    res = result_for([OBJECTS[0][0], OBJECTS[1][0]])
    s.locate(res, 0 if setup == "no_stamp" else stamp, "cam")
    assert all(not o.location.has_position for o in res.outputs)
    assert any(note in n for n in res.notes), res.notes


def test_a_lagging_depth_frame_is_waited_for_and_a_late_one_is_refused():
    s = source(wait_ms=2000, max_stamp_diff_ms=50)
    s.add_depth(900_000_000, "cam", DepthMsg(scene_depth()))  # the previous depth frame
    stamp = 1_000_000_000
    # arrives 0.2 s after the 3D step started, stamped 30 ms after the colour frame: used
    timer = threading.Timer(0.2, lambda: s.add_depth(stamp + 30_000_000, "cam", DepthMsg(scene_depth())))
    timer.start()
    res = result_for([OBJECTS[0][0]])
    s.locate(res, stamp, "cam")
    timer.join()
    assert res.outputs[0].location.has_position, res.notes
    # beyond the tolerance: a depth frame 200 ms later arrives, and is not used
    stamp2 = 2_000_000_000
    timer = threading.Timer(0.2, lambda: s.add_depth(stamp2 + 200_000_000, "cam", DepthMsg(scene_depth())))
    timer.start()
    res = result_for([OBJECTS[0][0]])
    s.locate(res, stamp2, "cam")
    timer.join()
    assert not res.outputs[0].location.has_position
    assert any("200 ms newer than the colour frame" in n for n in res.notes), res.notes
    # a stalled depth stream (newest frame seconds old) is not waited for: the answer is not delayed
    s = source(wait_ms=60_000, max_stamp_diff_ms=50)
    s.add_depth(1_000_000_000, "cam", DepthMsg(scene_depth()))
    started = time.monotonic()
    res = result_for([OBJECTS[0][0]])
    s.locate(res, 9_000_000_000, "cam")
    assert time.monotonic() - started < 30  # it would have waited 60 s
    assert any("ms older than the colour frame" in n for n in res.notes), res.notes


def test_a_colour_frames_depth_match_outlives_the_depth_buffer():
    """A model call longer than the depth buffer's span must not lose the query its depth frame."""
    s = source(buffer_size=3, wait_ms=0)
    early = Frame(1_000_000_000, "cam", None, lambda raw: raw)
    s.colour_arrived(early)  # before its depth frame: matched when that arrives (10 ms later)
    s.add_depth(1_010_000_000, "cam", DepthMsg(scene_depth()))
    late = Frame(1_500_000_000, "cam", None, lambda raw: raw)
    s.add_depth(1_500_000_000, "cam", DepthMsg(scene_depth()))
    s.colour_arrived(late)  # after its depth frame: matched at once
    for i in range(10):  # the depth buffer moves on while the model runs
        s.add_depth(2_000_000_000 + i * 100_000_000, "cam", DepthMsg(scene_depth()))
    assert early.depth.stamp_ns == 1_010_000_000 and late.depth.stamp_ns == 1_500_000_000
    for frame in (early, late):
        res = result_for([OBJECTS[0][0]])
        s.locate(res, frame.stamp_ns, "cam", frame.depth)
        assert res.outputs[0].location.has_position, res.notes
    res = result_for([OBJECTS[0][0]])
    s.locate(res, early.stamp_ns, "cam")  # without the match: the buffer no longer has it
    assert not res.outputs[0].location.has_position


# -- through the query processor's worker ---------------------------------------------------------


class MaskEngine:
    """Answers CAPTION with each region's mask (what the real engine's 3D input is), at once."""

    def caption(self, image, regions, frame_key=None, **kw):
        size = image.shape[:2]
        outs = [RegionAnswer(name=r.name, mask=region_mask(r, size)) for r in regions]
        return TaskResult("caption", outs, "fake", True, size, {})

    def run_batch(self, image, items, *, frame_key=None):
        """Queued queries on one frame in one call (the worker's batch path): one result each."""
        self.batches.append(len(items))
        return [self.caption(image, item.regions) for item in items]

    def free_memory(self):
        pass

    def __init__(self) -> None:
        self.batches: list[int] = []


def _box_of(mask) -> BoxRegion:
    ys, xs = np.nonzero(mask)
    return BoxRegion(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float), "obj")


def test_processor_adds_positions_after_the_model_and_a_burst_is_answered_once_each():
    outcomes = []
    frames = FrameBuffer(capacity=5, tolerance_s=0.01)
    engine = MaskEngine()
    proc = QueryProcessor(engine, frames, outcomes.append, queue_size=300)
    proc.depth_source = source(wait_ms=100)
    image = np.zeros((H, W, 3), np.uint8)
    stamp = 3_000_000_000
    frames.add(Frame(stamp, "cam", image, lambda raw: raw))
    proc.depth_source.add_depth(stamp, "cam", DepthMsg(scene_depth()))
    try:
        n = 200
        for i in range(n):
            mask = OBJECTS[i % 3][0]
            proc.submit(QuerySpec(query_id=f"q{i}", task=Task.CAPTION, stamp_ns=stamp, regions=[_box_of(mask)]))
        proc.start()  # after the burst: the worker takes it in batches
        assert wait_until(lambda: len(outcomes) >= n)
        time.sleep(0.2)  # nothing more may come
        assert sorted(o.query_id for o in outcomes) == sorted(f"q{i}" for i in range(n))
        assert all(o.status == Status.OK for o in outcomes)
        assert max(engine.batches) > 1  # the batch path located its outputs (the late query below: one alone)
        for o in outcomes:
            i = int(o.query_id[1:])
            assert o.position_frame_id == "cam"
            loc = o.result.outputs[0].location
            assert loc.position[2] == pytest.approx(OBJECTS[i % 3][1][2], abs=0.01)
        # a query on a colour frame with no depth within tolerance: answered, without a position
        frames.add(Frame(stamp + 500_000_000, "cam", image, lambda raw: raw))
        proc.submit(QuerySpec(query_id="late", task=Task.CAPTION, stamp_ns=stamp + 500_000_000,
                              regions=[_box_of(OBJECTS[0][0])]))
        assert wait_until(lambda: len(outcomes) == n + 1)
        late = outcomes[-1]
        assert late.status == Status.OK and late.result.outputs[0].location.position is None
        assert any("older than the colour frame" in note for note in late.result.notes)
    finally:
        proc.stop()
