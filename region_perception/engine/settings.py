"""Which value each engine setting takes, and where it came from.

Four levels, highest first: the command line, a ``--config`` file or the node's parameters, the
model's own settings, the package's defaults (:class:`EngineConfig`'s field defaults, which
``config/default.yaml`` repeats). A model directory's ``region_perception.json`` may carry, under
``settings``, the engine settings it was trained and evaluated with (as a transformers model
carries its ``generation_config.json``), so that naming the model alone reproduces its card. Only
the settings in :data:`MODEL_OWN` can come from a model: how to load a model (its name, revision,
device, dtype, trust) is never the model's to decide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EngineConfig

COMMAND_LINE = "command line"
CONFIG = "config"
MODEL = "model"
DEFAULT = "default"
LEVELS = (COMMAND_LINE, CONFIG, MODEL, DEFAULT)  # precedence, highest first
# not a level: what the engine ran with instead of a setting's value when that could not be had (the package's
# default segmenter offline); such an entry also says what it replaced ("instead_of") and why ("why")
FALLBACK = "offline fallback"

MODEL_SETTINGS_KEY = "settings"  # in region_perception.json
# what a model may bring (dotted names, as the node's parameters and config/default.yaml spell them)
MODEL_OWN = frozenset({
    "segmenter", "segmenter_backend", "proposals", "refer_route",
    "proposal_filter.min_area_fraction", "proposal_filter.max_border_fraction", "proposal_filter.max_proposals",
    "proposal_filter.max_overlap_iou", "proposal_filter.max_inside_fraction",
    "points_per_region", "refer_draws", "max_new_tokens", "num_beams", "default_vocabulary",
})


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Engine settings with ``proposal_filter`` spelt as dotted names (``proposal_filter.max_proposals``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "proposal_filter" and dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if key == "proposal_filter" and isinstance(value, Mapping):
            out.update({f"proposal_filter.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def package_defaults() -> dict[str, Any]:
    """Every engine setting's package default, flat (the one source: :class:`EngineConfig`)."""
    return flatten({f.name: getattr(EngineConfig(), f.name) for f in dataclasses.fields(EngineConfig)})


def engine_keys() -> frozenset[str]:
    return frozenset(package_defaults())


def to_config(flat: Mapping[str, Any]) -> EngineConfig:
    """An :class:`EngineConfig` from flat settings (unknown keys are ignored: node-only parameters)."""
    values: dict[str, Any] = {}
    pf: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("proposal_filter."):
            pf[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    return EngineConfig.from_dict({**values, "proposal_filter": pf})


class SettingsError(ValueError):
    """A model's own settings that cannot be used (an unknown key, a wrong type)."""


def model_own_settings(meta: Mapping[str, Any], model_dir: Path | None = None) -> dict[str, Any]:
    """The settings a model's ``region_perception.json`` carries (flat); a vocabulary file shipped in the
    model's directory becomes its path. Keys outside :data:`MODEL_OWN` are refused, loudly."""
    raw = meta.get(MODEL_SETTINGS_KEY) or {}
    if not isinstance(raw, Mapping):
        raise SettingsError(f"region_perception.json: {MODEL_SETTINGS_KEY!r} must be a mapping")
    own = flatten(raw)
    unknown = sorted(set(own) - MODEL_OWN)
    if unknown:
        raise SettingsError(f"region_perception.json settings: {', '.join(unknown)} cannot come from a model "
                            f"(it may set {', '.join(sorted(MODEL_OWN))})")
    defaults = package_defaults()
    for key, value in own.items():
        expected = type(defaults[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            own[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise SettingsError(f"region_perception.json settings: {key} = {value!r} is not a {expected.__name__}")
    vocab = own.get("default_vocabulary")
    if vocab and model_dir is not None and (Path(model_dir) / vocab).is_file():
        own["default_vocabulary"] = str(Path(model_dir) / vocab)
    return own


@dataclass
class UserSettings:
    """What the user set, by level: the command line's options and the config file's / node's parameters.

    Only what was actually set belongs here (an option left out, a parameter not in the file): whatever
    is missing comes from the model's own settings, then from the package defaults.
    """

    command_line: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # the caller gave a whole EngineConfig: the model's own settings never apply

    def __post_init__(self) -> None:
        keys = engine_keys()
        self.command_line = {k: v for k, v in flatten(self.command_line).items() if k in keys and v is not None}
        self.config = {k: v for k, v in flatten(self.config).items() if k in keys and v is not None}

    @classmethod
    def everything(cls, config: EngineConfig) -> UserSettings:
        """A complete config given by a caller: every setting counts as set (the model's own never apply);
        those that differ from the package defaults are reported as the config's."""
        defaults = package_defaults()
        given = flatten(dataclasses.asdict(config))
        return cls(config={k: v for k, v in given.items() if v != defaults[k]}, complete=True)

    def loading_config(self) -> EngineConfig:
        """The settings that load the model, before its own are known (they are never the model's)."""
        return self.resolve({})[0]

    def resolve(self, model_own: Mapping[str, Any]) -> tuple[EngineConfig, dict[str, str]]:
        """(the engine config, the level each setting came from)."""
        values, sources = {}, {}
        own = {} if self.complete else model_own
        for level, layer in ((DEFAULT, package_defaults()), (MODEL, own), (CONFIG, self.config),
                             (COMMAND_LINE, self.command_line)):
            for key, value in layer.items():
                values[key], sources[key] = value, level
        if sources["proposals"] == MODEL and values["proposals"] == "sam" and values["segmenter"] in ("", "none"):
            # the model's SAM proposals need its segmenter, which the user turned off: the default proposals then,
            # with the default filter unless the user set one (the model's filter was tuned for its own proposals)
            defaults = package_defaults()
            for key in ("proposals", *(k for k in defaults if k.startswith("proposal_filter."))):
                if sources[key] == MODEL:
                    values[key], sources[key] = defaults[key], DEFAULT
        return to_config(values), sources


def describe_sources(config: EngineConfig, sources: Mapping[str, str],
                     model_own: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """What a reader needs to reproduce an answer: ``{name: {"value": v, "from": level}}`` for every setting
    whose value is not the package default, and every one the model has its own value for (whoever won)."""
    values, defaults, own = flatten(dataclasses.asdict(config)), package_defaults(), model_own or {}
    return {k: {"value": values[k], "from": src} for k, src in sorted(sources.items())
            if src != DEFAULT and (values[k] != defaults[k] or k in own)}


def fallback_settings(wanted: EngineConfig, running: EngineConfig, why: str) -> dict[str, dict[str, Any]]:
    """The settings an offline fallback changed, as :func:`describe_sources` entries with ``from`` :data:`FALLBACK`:
    ``{"segmenter": {"value": "none", "from": "offline fallback", "instead_of": "facebook/sam-vit-base",
    "why": "facebook/sam-vit-base: no_network"}}``."""
    before, after = flatten(dataclasses.asdict(wanted)), flatten(dataclasses.asdict(running))
    return {k: {"value": after[k], "from": FALLBACK, "instead_of": before[k], "why": why}
            for k in sorted(after) if after[k] != before[k]}


def source_lines(described: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``["segmenter=none (model)", ...]``: the same, one line a setting (ROS messages, diagnostics); a fallback's
    ``"segmenter=none (offline fallback: facebook/sam-vit-base: no_network)"``."""
    lines = []
    for key, entry in described.items():
        where = str(entry["from"])
        if entry.get("why"):
            where += f": {entry['why']}"
        lines.append(f"{key}={entry['value']} ({where})")
    return lines
