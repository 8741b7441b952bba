"""Where a model's files come from, and one error saying why they cannot be had.

A model named by the user that cannot be loaded must be an error, never a silent swap to
random weights, and the error must tell "no such path" from "no such hub repository" from
"no network" from "the files are there but broken". The rules:

- a local path (absolute, ``./``/``../``/``~``, more than one separator, or anything that
  exists) is never looked up on the hub;
- an ``owner/name`` id (at ``revision``: a branch, tag or commit) is looked for in the
  huggingface_hub cache first; only when it is not completely there is the hub asked, and
  only if it can be reached (``HF_HUB_OFFLINE`` or no connection: ``no_network``, "partly
  cached" when some files are there); the files are then downloaded into the cache
  (``fetch.py``) and loaded from there: a reachable hub without the repository is
  ``not_found_hub``, without the revision ``unknown_revision``, answering 5xx ``hub_error``,
  a download cut twice ``download_failed``;
- anything else is an unknown name (with the registry's closest names as suggestions).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import REASON_TEXT, REASONS, ModelLoadError, one_line  # noqa: F401  (the old names stay here)
from .fetch import fetch

# Bound here and always called through these globals: replacing ``sources.hub_reachable`` (a test,
# an offline check) changes every hub question asked while loading, the download's included.
from .hub import hub_cached, hub_endpoint, hub_reachable, hub_repo_exists  # noqa: F401

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def looks_local(name: str) -> bool:
    """A path, not a hub id: such a name is never looked up on the hub."""
    if Path(name).expanduser().exists():
        return True
    if name.startswith(("/", "./", "../", "~", ".")) or os.path.isabs(name):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    return name.count("/") > 1 or name.endswith("/")


def is_hub_id(name: str) -> bool:
    """``owner/name`` as the hub spells repository ids (no ``--`` or ``..``), and not a path."""
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name and not looks_local(name)


@dataclass(frozen=True)
class Source:
    """A resolved model: a local directory (a hub id's is its cached snapshot) or a hub id."""

    what: str  # "model", "segmenter", "snap model": for messages
    name: str  # as the user wrote it
    ref: str  # the directory or the hub id handed to from_pretrained
    on_hub: bool
    commit: str = ""  # a hub id's: the commit its snapshot holds (what a pinned revision resolved to)
    revision: str = ""  # a hub id's: the revision asked for ("" = main)

    def error(self, reason: str, detail: str) -> ModelLoadError:
        return ModelLoadError(reason, self.what, self.name, detail)


@dataclass(frozen=True)
class ResolvedSource:
    """A name resolved once (``loading.resolve``): where its files are and what they say about themselves.

    ``kind``: tiny | toy | packaged | local | hub (see ``registry.kind_of``); ``backend``: the loader's
    key (florence2, regionvlm, regiongpt, sam, hf-sam, sentence-transformers); ``meta``: the
    ``region_perception.json`` this package's own tools wrote beside the weights (trained, note,
    refer_prompt, regionvlm_points, refinement_trained), read once here.
    """

    source: Source
    kind: str
    backend: str = ""
    weights_random: bool = False  # the tiny models' RANDOM_WEIGHTS_MARKER is there
    meta: dict = field(default_factory=dict)

    @property
    def what(self) -> str:
        return self.source.what

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def ref(self) -> str:
        return self.source.ref

    @property
    def path(self) -> Path:
        return Path(self.source.ref)

    @property
    def local(self) -> Path | None:
        """The directory the files are in (None: still on the hub)."""
        return None if self.source.on_hub else Path(self.source.ref)

    @property
    def commit(self) -> str:
        return self.source.commit

    @property
    def revision(self) -> str:
        return self.source.revision

    def error(self, reason: str, detail: str) -> ModelLoadError:
        return self.source.error(reason, detail)


def read_meta(local: Path | None) -> dict:
    """A local model's ``region_perception.json`` (what this package's own tools wrote beside the weights)."""
    meta = local / "region_perception.json" if local is not None else None
    if meta is None or not meta.is_file():
        return {}
    try:
        info = json.loads(meta.read_text())
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def unknown_name(what: str, name: str, known: list[str], hint: str = "") -> ModelLoadError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    close += [k for k in known if k.split("/")[-1].lower() == name.lower() and k not in close]
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelLoadError(
        "unknown_name",
        what,
        name,
        f"not a registry name, not an existing path and not a hub id (owner/name){hint}{suggestion}",
    )


def locate(
    what: str, name: str, known: list[str], *, hint: str = "", need: str = "config.json", revision: str = ""
) -> Source:
    """Resolve ``name`` to a local directory, or ModelLoadError; a hub id becomes its snapshot directory.

    ``need`` is the file a model directory must have; the hub is asked only for an
    ``owner/name`` id whose ``revision`` is not completely cached, and only when it can be reached.
    ``revision`` applies to hub ids only (a local path has none: asking for one is an error).
    """
    if not name:
        raise ModelLoadError("unknown_name", what, name, "no model named (empty string)")
    if looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(
                "not_found_local",
                what,
                name,
                f"no such file or directory {path.absolute()} (a local path is never looked up on the hub)",
            )
        if not path.is_dir():
            raise ModelLoadError(
                "unreadable_checkpoint", what, name, f"{path} is a file; expected a model directory with {need}"
            )
        if need and not (path / need).is_file():
            raise ModelLoadError("unreadable_checkpoint", what, name, f"directory {path} has no {need}")
        if revision:
            raise ModelLoadError(
                "unknown_revision", what, name, f"revision {revision!r} given for a local directory (hub ids only)"
            )
        return Source(what, name, str(path), on_hub=False)
    if not is_hub_id(name):
        raise unknown_name(what, name, known, hint)
    fetched = fetch(what, name, revision, need=need, reachable=hub_reachable)
    return Source(what, name, str(fetched.path), on_hub=False, commit=fetched.commit, revision=fetched.revision)


def read_config(source: Source) -> dict[str, Any]:
    """The model's config.json (cached or downloaded for a hub id)."""
    try:
        if source.on_hub:
            from huggingface_hub import hf_hub_download

            path = hub_cached(source.ref) or hf_hub_download(source.ref, "config.json")
        else:
            path = str(Path(source.ref) / "config.json")
        config = json.loads(Path(path).read_text())
    except ModelLoadError:
        raise
    except Exception as exc:
        raise source.error("unreadable_checkpoint", f"config.json of {source.ref}: {one_line(exc)}") from exc
    if not isinstance(config, dict):
        raise source.error("unreadable_checkpoint", f"config.json of {source.ref} is not a JSON object")
    return config


def from_pretrained(cls, source: Source, **kwargs):
    """``cls.from_pretrained`` with every failure as a ModelLoadError.

    A hub id is loaded from the cache first; the network is used only when files are
    missing there and the hub can be reached.
    """
    try:
        if not source.on_hub:
            return cls.from_pretrained(source.ref, **kwargs)
        try:
            return cls.from_pretrained(source.ref, local_files_only=True, **kwargs)
        except OSError as exc:
            if not hub_reachable():
                raise source.error(
                    "no_network", f"only partly cached ({one_line(exc)}) and the hub {hub_endpoint()} cannot be reached"
                ) from exc
        return cls.from_pretrained(source.ref, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        where = f"the hub repository {source.ref}" if source.on_hub else source.ref
        raise source.error("unreadable_checkpoint", f"{cls.__name__} from {where}: {one_line(exc)}") from exc
