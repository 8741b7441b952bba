"""The questions asked of the Hugging Face hub itself: reachable? has this repository? cached?

``sources`` binds these as its own globals and always calls them through them, so a test (or a
caller) that replaces ``sources.hub_reachable`` & co. changes every check made while loading.
"""

from __future__ import annotations


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can files be downloaded now? (transformers itself retries for minutes when not.)"""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else "")


def hub_repo_exists(repo_id: str) -> bool:
    """Does the hub have this model repository? (Asked only when the hub is reachable.)"""
    from huggingface_hub import repo_exists

    return bool(repo_exists(repo_id))


def hub_cached(repo_id: str, filename: str = "config.json") -> str | None:
    """The cached copy of a hub file, or None: no network is needed to answer."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id the cache cannot even hold is not cached
        return None
    return found if isinstance(found, str) else None
