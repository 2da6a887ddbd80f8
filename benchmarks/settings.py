"""Settings for the benchmarks: variants as typed on a command line, and params.yaml changed the way a
benchmark asks, then read and checked by the loader every stage uses (core.config.parse_params), so
that a section added to params.yaml reaches the benchmarks too."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _settings(body: str) -> list[str]:
    """ "a=1,b=[2,3],c=x" -> ["a=1", "b=[2,3]", "c=x"]: commas inside brackets belong to a list."""
    parts, depth, current = [], 0, ""
    for ch in body:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in parts + [current] if p]


def setting_value(text: str):
    """A value as typed after `key=`: YAML, except that 1e-3 is the number (YAML 1.1 reads it as text)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_variant(text: str, separator: str = ":") -> tuple[str, dict]:
    """ "name:key=value,key=value" -> (name, {key: value}), values as `setting_value` reads them."""
    name, _, body = text.partition(separator)
    return name, {
        key.strip(): setting_value(value) for key, _, value in (pair.partition("=") for pair in _settings(body))
    }


def read_params(path: str | Path = REPO / "params.yaml") -> dict:
    """params.yaml as the dict a benchmark changes."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def change_profile(
    raw: dict,
    family: str | None = None,
    *,
    training: dict | None = None,
    generation: dict | None = None,
    lora: dict | None = None,
    **keys,
) -> dict:
    """`raw` with `family` selected (default: raw's `model`) and its profile changed: keys of its
    `base` (name, backend, dtype, ...), `training`, `generation` and `lora` sections (created where
    the profile has none)."""
    if family is not None:
        raw["model"] = family
    profile = raw["models"][raw["model"]]
    profile["base"].update(keys)
    for section, changes in (("training", training), ("generation", generation), ("lora", lora)):
        if changes:
            profile.setdefault(section, {}).update(changes)
    return raw


def checked(raw: dict, path: str | Path = REPO / "params.yaml"):
    """The typed, validated params of `raw` (core.config.parse_params): a bad change fails here, listed."""
    from core.config import parse_params

    return parse_params(copy.deepcopy(raw), str(path))
