"""The demo camera reads an image, a folder or a video (and bundled photos by default)."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from region_perception.ros.camera import frames_from, resize


def test_bundled_photos_are_real_rgb_images():
    frames = list(frames_from(None, loop=False))
    assert [name for name, _ in frames] == ["astronaut", "coffee", "chelsea", "rocket"]
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for _, f in frames)


def test_folder_image_and_video(tmp_path):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :, 0] = 200  # red in RGB
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = list(frames_from(str(tmp_path), loop=False))
    assert [n for n, _ in folder] == ["0.png", "1.png"] and folder[0][1][0, 0, 0] == 200
    single = list(frames_from(str(tmp_path / "0.png"), loop=False))
    assert len(single) == 1
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for _ in range(3):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    frames = list(frames_from(str(video), loop=False))
    assert len(frames) == 3 and frames[0][1].shape == (24, 32, 3)
    looped = list(itertools.islice(frames_from(str(tmp_path / "0.png"), loop=True), 5))
    assert len(looped) == 5


def test_bad_sources_say_why(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        list(frames_from(str(tmp_path), loop=False))
    bogus = tmp_path / "x.mp4"
    bogus.write_text("nope")
    with pytest.raises(FileNotFoundError, match="not an image, folder or video"):
        list(frames_from(str(bogus), loop=False))


def test_resize_keeps_aspect():
    assert resize(np.zeros((100, 200, 3), np.uint8), 100, 0).shape == (50, 100, 3)
