"""A small typed reader over parsed TOML that knows where it is.

Every accessor takes the key, the expected kind and a default, and on any mismatch raises
ConfigError naming the file, the full key path (`deployments[0].template.slots`) and what
was expected. `done()` rejects keys nobody asked for (typos must not pass silently).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from lbbench.errors import ConfigError
from lbbench.model.servicetime import parse_duration

T = TypeVar("T")
_MISSING: Any = object()


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


class Table:
    def __init__(self, file: str, path: str, data: dict[str, Any]) -> None:
        self.file = file
        self.path = path
        self.data = data
        self._seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.file, self.key_path(key), expected)

    def has(self, key: str) -> bool:
        return key in self.data

    def _raw(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.fail(key, "is required")
        return default

    def text(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] | None = None) -> Any:
        value = self._raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_kind(value)} {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    def integer(self, key: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None) -> Any:
        value = self._raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)} {value!r}")
        return self._range(key, value, lo, hi)

    def number(self, key: str, default: Any = _MISSING, lo: float | None = None, hi: float | None = None) -> Any:
        value = self._raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"expected a number, got {_kind(value)} {value!r}")
        return self._range(key, float(value), lo, hi)

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        value = self._raw(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_kind(value)} {value!r}")
        return value

    def duration(self, key: str, default: Any = _MISSING, lo: float = 0.0, hi: float | None = None) -> Any:
        """A duration with its unit: '250ms', '1.5s', '100us'. Returns seconds."""
        value = self._raw(key, default)
        if value is default and default is not _MISSING and not isinstance(value, str):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            if "give a unit" in str(e):
                raise self.fail(key, str(e)) from None
            raise self.fail(key, f"expected a duration such as '250ms' or '2s', got {value!r}") from None
        return self._range(key, seconds, lo, hi, unit="s")

    def parsed(self, key: str, parse: Callable[[Any], T], expected: str, default: Any = _MISSING) -> T:
        value = self._raw(key, default)
        try:
            return parse(value)
        except (ValueError, TypeError) as e:
            if "give a unit" in str(e):  # the fix is the whole message: "exp:10: give a unit, e.g. 10ms"
                raise self.fail(key, str(e)) from None
            raise self.fail(key, f"expected {expected}; got {value!r} ({e})") from None

    def str_list(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._raw(key, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected an array of strings, got {value!r}")
        return tuple(value)

    def num_list(self, key: str, default: Any = _MISSING) -> tuple[float, ...]:
        value = self._raw(key, default)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise self.fail(key, f"expected an array of numbers, got {value!r}")
        return tuple(float(v) for v in value)

    def str_map(self, key: str, default: Any = _MISSING) -> dict[str, str]:
        value = self._raw(key, default)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.fail(key, f"expected a table of strings such as {{ app = \"web\" }}, got {value!r}")
        return dict(value)

    def table(self, key: str, required: bool = False) -> Table:
        value = self._raw(key, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)} {value!r}")
        return Table(self.file, self.key_path(key), value)

    def tables(self, key: str) -> Iterator[Table]:
        value = self._raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"expected an array of tables ([[{key}]]), got {_kind(value)}")
        for i, item in enumerate(value):
            yield Table(self.file, f"{self.key_path(key)}[{i}]", item)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            raise self.fail(unknown[0], f"unknown key; known keys here: {known}")

    def _range(self, key: str, value: Any, lo: Any, hi: Any, unit: str = "") -> Any:
        if lo is not None and value < lo:
            raise self.fail(key, f"must be >= {lo}{unit}, got {value!r}")
        if hi is not None and value > hi:
            raise self.fail(key, f"must be <= {hi}{unit}, got {value!r}")
        return value
