"""Getting a hub repository's files onto this machine: from the cache, or downloaded once, pinned.

A robot's first run downloads its models; later runs are often offline. So a hub id is always
turned into a local snapshot directory *before* anything is loaded, and transformers /
sentence-transformers / SAM then load that directory (they never talk to the hub themselves):

- the cache is asked first: a complete snapshot of the revision (``main``, a tag, a commit)
  is used with no request at all; "complete" means every file this package would download
  (the tree listing huggingface_hub cached with the snapshot says which) is there;
- otherwise, unless ``HF_HUB_OFFLINE`` is set or the hub cannot be reached, the revision is
  resolved to a commit, the files are chosen (one weights format: safetensors when the
  repository has them) and downloaded with ``snapshot_download``, which writes each file to
  a temporary name and moves it into the cache only once it is whole; a download that fails
  part-way is retried once;
- every failure is one :class:`ModelLoadError` line: ``not_found_hub``, ``unknown_revision``,
  ``hub_error`` (the hub answered 5xx), ``no_network`` (offline or unreachable, with "partly
  cached" when some files are there), ``download_failed`` (cut twice).

``refresh=True`` (``region-perception models --download``) always asks the hub, so a branch
moves to its newest commit; a pinned commit never changes.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ModelLoadError, one_line
from .hub import hub_endpoint, hub_reachable

log = logging.getLogger("region_perception")

# Other frameworks' weights and exports: never loaded here, so never downloaded.
NEVER_NEEDED = (
    "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.mlmodel", "*.gguf",
    "onnx/*", "openvino/*", "coreml/*", "tf_model*", "flax_model*", "rust_model*",
)
# PyTorch pickles, skipped when the repository also has safetensors (transformers prefers those).
PICKLED_WEIGHTS = ("*.bin", "*.pth", "*.pt", "*.ckpt")
WEIGHTS = ("*.safetensors", *PICKLED_WEIGHTS)


@dataclass(frozen=True)
class Fetched:
    """A hub repository at one commit, as a local directory."""

    repo_id: str
    revision: str  # as asked ("main" when none was)
    commit: str
    path: Path
    files: tuple[str, ...] = field(default=())
    size: int = 0  # bytes of ``files`` (0 when unknown)
    downloaded: bool = False  # the hub was asked this time


def choose_files(paths: list[str]) -> list[str]:
    """The files of a repository this package loads: no other framework's weights, one weights format."""
    keep = [p for p in paths if not any(fnmatch.fnmatch(p, pat) for pat in NEVER_NEEDED)]
    if any(fnmatch.fnmatch(p, "*.safetensors") for p in keep):
        keep = [p for p in keep if not any(fnmatch.fnmatch(p, pat) for pat in PICKLED_WEIGHTS)]
    return sorted(keep)


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _classify(what: str, repo_id: str, revision: str, exc: BaseException, doing: str) -> ModelLoadError:
    """One ModelLoadError line for whatever huggingface_hub raised while ``doing``."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    for err in _cause_chain(exc):
        if isinstance(err, RevisionNotFoundError):
            return ModelLoadError("unknown_revision", what, repo_id,
                                  f"the hub {endpoint} has no revision {revision!r} of {repo_id} "
                                  "(a branch, tag or commit)")
        if isinstance(err, RepositoryNotFoundError):
            return ModelLoadError("not_found_hub", what, repo_id,
                                  f"the hub {endpoint} has no model repository {repo_id} (or it is private or gated; "
                                  "and it is not a local path)")
        if isinstance(err, RemoteEntryNotFoundError):
            return ModelLoadError("hub_error", what, repo_id, f"{doing}: a listed file is missing on the hub "
                                  f"{endpoint}: {one_line(err)}")
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            status = err.response.status_code
            return ModelLoadError("hub_error", what, repo_id,
                                  f"{doing}: the hub {endpoint} answered HTTP {status} ({one_line(err)})")
    names = {type(err).__name__ for err in _cause_chain(exc)}
    text = " ".join(one_line(err) for err in _cause_chain(exc))
    if names & {"RemoteProtocolError", "ReadError", "ReadTimeout", "WriteError"} or "Consistency check failed" in text:
        return ModelLoadError("download_failed", what, repo_id,
                              f"{doing}: the download was cut off ({one_line(exc)}); "
                              "nothing partial was kept in the cache")
    if names & {"ConnectError", "ConnectTimeout", "TimeoutException", "PoolTimeout", "OfflineModeIsEnabled"}:
        return ModelLoadError("no_network", what, repo_id, f"{doing}: the hub {endpoint} cannot be reached "
                              f"({one_line(exc)})")
    return ModelLoadError("hub_error", what, repo_id, f"{doing}: {type(exc).__name__}: {one_line(exc)}")


def _missing(base: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (base / f).is_file()]


def cached(repo_id: str, revision: str = "", *, need: str = "config.json",
           cache_dir: str | Path | None = None) -> tuple[Fetched | None, list[str]]:
    """The complete cached snapshot of ``repo_id`` at ``revision`` with no request: (snapshot, [])
    when complete; (None, missing files) when only partly there; (None, []) when not cached at all."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError, RevisionResolutionError

    revision = revision or "main"
    try:
        resolved = _api().resolve_revision(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        commit = resolved.resolved
    except (RevisionResolutionError, LocalEntryNotFoundError):
        return None, []
    try:
        listed = [f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache_dir)]
        files = choose_files(listed)
    except (CachedRepoTreeNotFoundError, OSError, ValueError):  # fetched by something else: judge by what is there
        files = None
    try:
        path = Path(snapshot_download(repo_id, revision=commit, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=files))
    except LocalEntryNotFoundError as exc:  # IncompleteSnapshotError included
        if files is None:
            return None, []
        base = getattr(exc, "snapshot_path", None)  # set when the folder is there but incomplete
        return None, _missing(Path(base), files) if base else files
    if files is None:
        present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        has_weights = any(fnmatch.fnmatch(p, pat) for p in present for pat in WEIGHTS)
        missing = [need] if need and need not in present else []
        if not has_weights:
            missing.append("weights (*.safetensors or *.bin)")
        if missing:
            return None, missing
        files = present
    missing = _missing(path, files)
    if missing:
        return None, missing
    size = sum((path / f).stat().st_size for f in files)
    return Fetched(repo_id, revision, commit, path, tuple(files), size), []


def fetch(
    what: str,
    repo_id: str,
    revision: str = "",
    *,
    need: str = "config.json",
    refresh: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    reachable: Callable[[], bool] = hub_reachable,
) -> Fetched:
    """``repo_id`` at ``revision`` as a complete local snapshot, downloading what is missing, or
    ModelLoadError. ``need``: a file the repository must have (config.json for a model);
    ``reachable``: asked (only when the cache is not enough) whether the hub can be reached."""
    from huggingface_hub import constants

    revision = revision or "main"
    have, missing = cached(repo_id, revision, need=need, cache_dir=cache_dir)
    if have is not None and not refresh:
        return have
    partly = (f"only partly cached ({len(missing)} file(s) missing: {', '.join(missing[:3])}"
              f"{', ...' if len(missing) > 3 else ''})") if missing else "not in the local cache"
    at = f" at revision {revision!r}" if revision != "main" else ""
    if constants.HF_HUB_OFFLINE or not reachable():
        if have is not None:  # refresh asked, but the cached snapshot is complete
            return have
        raise ModelLoadError(
            "no_network", what, repo_id,
            f"{partly}{at} and the hub {hub_endpoint()} cannot be reached; "
            f"tried: the huggingface_hub cache ({constants.HF_HUB_CACHE if cache_dir is None else cache_dir}), the hub",
        )
    try:
        got = _download(what, repo_id, revision, need=need, cache_dir=cache_dir, progress=progress)
    except ModelLoadError as exc:
        if exc.reason not in ("download_failed", "hub_error", "no_network"):
            raise
        print(f"region-perception: {exc}; retrying once", file=sys.stderr, flush=True)
        got = _download(what, repo_id, revision, need=need, cache_dir=cache_dir, progress=progress)
    if have is not None and have.commit == got.commit:  # refreshed: the hub had nothing newer
        got = replace(got, downloaded=False)
    return got


def _download(what: str, repo_id: str, revision: str, *, need: str, cache_dir, progress: bool) -> Fetched:
    from huggingface_hub import snapshot_download
    from huggingface_hub.hf_api import RepoFile

    api = _api()
    try:
        resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache_dir)
    except Exception as exc:
        raise _classify(what, repo_id, revision, exc, f"resolving revision {revision!r}") from exc
    try:
        tree = [f for f in api.list_repo_tree(repo_id, revision=resolved.resolved, recursive=True)
                if isinstance(f, RepoFile)]
    except Exception as exc:
        raise _classify(what, repo_id, revision, exc, "listing the repository's files") from exc
    files = choose_files([f.path for f in tree])
    if need and need not in files:
        raise ModelLoadError("unreadable_checkpoint", what, repo_id,
                             f"the hub repository {repo_id} at commit {resolved.resolved} has no {need}")
    sizes = {f.path: f.size for f in tree}
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    if not progress:  # a first run may take minutes: say why (the bars are for `models --download`)
        size = sum(sizes.get(f, 0) for f in files) / 1e6
        print(f"region-perception: fetching {what} {repo_id}@{resolved.resolved} ({len(files)} files, {size:.1f} MB) "
              f"from {hub_endpoint()} into the cache", file=sys.stderr, flush=True)
    try:
        path = Path(snapshot_download(repo_id, revision=resolved, allow_patterns=files, cache_dir=cache_dir))
    except Exception as exc:
        raise _classify(what, repo_id, revision, exc, f"downloading {repo_id}@{resolved.resolved[:12]}") from exc
    missing = _missing(path, files)
    if missing:  # snapshot_download says done, yet files are absent: never load half a model
        raise ModelLoadError("download_failed", what, repo_id, f"after downloading, {', '.join(missing[:3])} missing")
    return Fetched(repo_id, revision, resolved.resolved, path, tuple(files), sum(sizes.get(f, 0) for f in files), True)
