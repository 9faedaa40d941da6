"""Parsing and formatting of the sizes and durations used in config, params and LXD keys."""

import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKMGTP]i?B|B)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "PB": 10**15,
    "KiB": 2**10,
    "kiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "PiB": 2**50,
}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_DURATION_FACTORS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` such as ``512MiB``, ``10GB`` or ``4096``.

    Raises:
        ValueError: when ``text`` is not a whole number with an optional LXD size suffix.
    """
    match = _SIZE_RE.match(text)
    if not match or match.group(2) not in _SIZE_FACTORS:
        raise ValueError(f"{text!r} is not a size (examples: 512MiB, 10GiB, 1GB)")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2)]


def format_size(num_bytes: int) -> str:
    """Return ``num_bytes`` in the largest binary unit that divides it exactly (LXD syntax)."""
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_FACTORS[unit]
        if num_bytes and num_bytes % factor == 0:
            return f"{num_bytes // factor}{unit}"
    return f"{num_bytes}B"


def parse_duration(text: str) -> int:
    """Return the seconds in ``text`` such as ``90``, ``30s``, ``15m``, ``12h`` or ``7d``.

    Raises:
        ValueError: when ``text`` is not a whole number with an optional s/m/h/d suffix.
    """
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 15m, 12h, 7d; 0 for none)")
    return int(match.group(1)) * _DURATION_FACTORS[match.group(2)]
