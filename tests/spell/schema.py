"""What conjure-up reads from a spell, as a schema (from the conjure-up spells format).

A spell directory holds ``metadata.yaml`` (the spell), a ``bundle.yaml`` beside it (or a
``bundle-name``), and ``steps/NN_name/`` directories, each with a ``metadata.yaml`` and
executable phase scripts. ``spell_problems`` and ``step_problems`` return one line per key or
value conjure-up would not accept; an empty list means valid.
"""

import re
from typing import Any

SPELL_KEYS: dict[str, type | tuple[type, ...]] = {
    "friendly-name": str,
    "version": (int, str),
    "description": str,
    "bundle-name": str,
    "options-whitelist": dict,
    "cloud-whitelist": list,
    "cloud-blacklist": list,
    "spell-type": str,
}
SPELL_REQUIRED = ("friendly-name", "description", "spell-type")
SPELL_TYPES = ("juju", "snap")
STEP_KEYS: dict[str, type | tuple[type, ...]] = {
    "title": str,
    "description": str,
    "viewable": bool,
    "required": bool,
    "sudo": bool,
    "additional-input": list,
    "cloud-whitelist": list,
}
STEP_REQUIRED = ("title", "description")
INPUT_KEYS: dict[str, type | tuple[type, ...]] = {
    "label": str,
    "key": str,
    "type": str,
    "default": (str, int, bool),
    "choices": list,
}
INPUT_TYPES: dict[str, type] = {
    "text": str,
    "password": str,
    "boolean": bool,
    "integer": int,
    "choice": str,
}
PHASES = (
    "validate-input",
    "after-input",
    "before-config",
    "before-deploy",
    "before-wait",
    "after-deploy",
)
STEP_DIR_RE = re.compile(r"^\d\d_[a-z0-9-]+$")
ENV_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _typed(
    where: str, data: dict[str, Any], keys: dict[str, Any], required: tuple[str, ...]
) -> list[str]:
    problems = [f"{where}: unknown key {key!r}" for key in data if key not in keys]
    problems += [f"{where}: missing {key!r}" for key in required if key not in data]
    for key, kind in keys.items():
        if key in data and not _is(data[key], kind):
            problems.append(f"{where}: {key!r} has the wrong type ({type(data[key]).__name__})")
    return problems


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, where a boolean is no integer unless bool is named."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _string_list(where: str, value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return []
    return [f"{where}: must be a list of strings"]


def spell_problems(data: Any) -> list[str]:
    """Problems of a spell's metadata.yaml."""
    if not isinstance(data, dict):
        return ["metadata.yaml: not a mapping"]
    problems = _typed("metadata.yaml", data, SPELL_KEYS, SPELL_REQUIRED)
    if data.get("spell-type") not in SPELL_TYPES:
        problems.append(f"metadata.yaml: spell-type must be one of {SPELL_TYPES}")
    for key in ("cloud-whitelist", "cloud-blacklist"):
        if key in data:
            problems += _string_list(f"metadata.yaml: {key}", data[key])
    for app, options in (data.get("options-whitelist") or {}).items():
        problems += _string_list(f"metadata.yaml: options-whitelist.{app}", options)
    return problems


def step_problems(data: Any, where: str = "step") -> list[str]:
    """Problems of a step's metadata.yaml."""
    if not isinstance(data, dict):
        return [f"{where}: not a mapping"]
    problems = _typed(where, data, STEP_KEYS, STEP_REQUIRED)
    if "cloud-whitelist" in data:
        problems += _string_list(f"{where}: cloud-whitelist", data["cloud-whitelist"])
    for number, entry in enumerate(data.get("additional-input") or []):
        at = f"{where}: additional-input[{number}]"
        if not isinstance(entry, dict):
            problems.append(f"{at}: not a mapping")
            continue
        problems += _typed(at, entry, INPUT_KEYS, ("label", "key", "type"))
        kind = INPUT_TYPES.get(entry.get("type", ""))
        if kind is None:
            problems.append(f"{at}: type must be one of {tuple(INPUT_TYPES)}")
            continue
        if not ENV_KEY_RE.match(str(entry.get("key", ""))):
            problems.append(f"{at}: key must be an environment variable name")
        default = entry.get("default")
        if default is not None and not _is(default, kind):
            problems.append(f"{at}: default does not match type {entry['type']}")
        if entry["type"] == "choice":
            choices = entry.get("choices")
            problems += _string_list(f"{at}: choices", choices)
            if isinstance(choices, list) and default is not None and default not in choices:
                problems.append(f"{at}: default is not one of the choices")
        elif "choices" in entry:
            problems.append(f"{at}: choices only go with type choice")
    return problems
