"""Config helpers shared by the scheduler, the agent and the client.

Every daemon takes the same keys from flags and from a TOML file; flags win.
Quantities (``4GiB``) and durations (``30m``) are parsed here, once.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from outrider.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")


def parse_bytes(value: Any) -> int:
    """Parse ``4GiB``, ``512M``, ``1000`` (bytes) into an int; raise ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 4GiB, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size like 4GiB, got {value!r}")
    m = _QUANTITY.match(value)
    if not m or m.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"expected a size like 512MiB, 4GiB or 1000 (bytes), got {value!r}")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    """Parse ``30m``, ``1h30m``, ``250ms``, ``5`` (seconds) into seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s or 5m, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 30s or 5m, got {value!r}")
    text = value.strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration like 250ms, 30s, 5m or 1h30m, got {value!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``k=v,k=v`` into a dict; raise ValueError naming the bad item."""
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item!r} is not of the form key=value")
        labels[key.strip()] = val.strip()
    return labels


def parse_address(value: Any) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too); port 0..65535. Raise ValueError naming the problem."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    if not host:
        raise ValueError(f"expected HOST:PORT, the host is missing in {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r} in {value!r}")
    return host, int(port)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; raise ConfigError naming the file and the problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


def absolute_paths(values: dict[str, Any], keys: Iterable[str], base: str) -> None:
    """Make every non-empty path setting among ``keys`` in ``values`` absolute against
    ``base`` (in place); ``~`` is expanded. A config file's paths are relative to the file,
    a flag's to the working directory: no relative path reaches a process whose working
    directory is something else (a stage's is its work dir)."""
    for key in keys:
        value = values.get(key)
        if isinstance(value, str) and value:
            values[key] = os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def merge_config(
    file_values: Mapping[str, Any], flag_values: Mapping[str, Any], known: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """Merge TOML values with flags (flags that are not None win) over defaults.

    ``known`` maps each accepted key to its default; an unknown key in the file is an
    error that names it, so a typo never silently falls back to a default.
    """
    unknown = sorted(set(file_values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    merged = dict(known)
    merged.update(file_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None and k in known})
    return merged
