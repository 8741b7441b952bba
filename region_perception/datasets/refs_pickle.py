"""Reading the refer toolkit's ``refs(unc).p`` / ``refs(umd).p`` without trusting the pickle.

Why: a pickle can run any code when loaded. These files only hold lists, dicts, strings and
numbers, so the unpickler admits exactly those and refuses any pickle that asks for a global
(a class or function), with an error that says which one it asked for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain containers and numbers."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"refusing pickle: it asks for {module}.{name}; only plain lists, dicts, strings and numbers are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing pickle: it uses persistent ids")


def load_refs_pickle(path: Path | str) -> list[dict]:
    """The refs list of a refer-toolkit pickle (Python 2 pickles are read as latin-1 strings)."""
    data = Path(path).read_bytes()
    try:
        refs = _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable refs pickle ({exc})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs
