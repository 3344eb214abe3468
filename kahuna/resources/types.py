"""Value types of resource fields: each checks an API value and says precisely what is wrong.

The official client is strict (pydantic StrictStr/StrictInt), so we are strict too: a string is
not an integer, an integer is not a boolean. `check` answers the value to store or raises
`Invalid` naming the field path.
"""

from __future__ import annotations

import abc
import ipaddress
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable

from kahuna.resources.errors import Invalid, Missing

MISSING: Any = object()
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Type(abc.ABC):
    label = "value"

    @abc.abstractmethod
    def check(self, value: Any, path: str) -> Any:
        """The value to store, or Invalid naming `path`."""

    def default_empty(self) -> Any:
        """What the API shows for an absent optional value (so strict clients get their type)."""
        return None


@dataclass(frozen=True)
class Str(Type):
    min_len: int = 0
    max_len: int = 4096
    label = "string"

    def check(self, value, path):
        if not isinstance(value, str):
            raise Invalid(f"{path}: expected a string")
        if "\x00" in value or not _utf8(value):  # SQLite/BSON cannot hold them
            raise Invalid(f"{path}: must not contain NUL characters or lone surrogates")
        if not self.min_len <= len(value) <= self.max_len:
            raise Invalid(f"{path}: length must be between {self.min_len} and {self.max_len}")
        return value

    def default_empty(self):
        return ""


@dataclass(frozen=True)
class Name(Str):
    """A resource name: non-empty, printable, no surrounding blanks; stored in NFC so that
    visually identical names (NFC "café", NFD "cafe\u0301") are one name for uniqueness."""

    min_len: int = 1
    max_len: int = 255

    def check(self, value, path):
        if isinstance(value, str) and _utf8(value):
            value = unicodedata.normalize("NFC", value)
        value = super().check(value, path)
        if value != value.strip() or not value.isprintable():
            raise Invalid(f"{path}: must be printable with no leading or trailing blanks")
        return value


@dataclass(frozen=True)
class Int(Type):
    low: int | None = None
    high: int | None = None
    label = "integer"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{path}: expected an integer")
        if not INT64_MIN <= value <= INT64_MAX:  # what both stores hold
            raise Invalid(f"{path}: out of the 64-bit integer range")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise Invalid(f"{path}: must be between {self.low} and {self.high}")
        return value

    def default_empty(self):
        return 0


@dataclass(frozen=True)
class Float(Type):
    low: float | None = None
    label = "number"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{path}: expected a number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise Invalid(f"{path}: must be a finite number")
        if self.low is not None and number < self.low:
            raise Invalid(f"{path}: must be at least {self.low}")
        return number

    def default_empty(self):
        return 0.0


@dataclass(frozen=True)
class Bool(Type):
    label = "boolean"

    def check(self, value, path):
        if not isinstance(value, bool):
            raise Invalid(f"{path}: expected true or false")
        return value

    def default_empty(self):
        return False


@dataclass(frozen=True)
class Enum(Type):
    choices: tuple[str, ...] = ()

    def check(self, value, path):
        if value not in self.choices:
            raise Invalid(f"{path}: must be one of {', '.join(self.choices)}")
        return value

    def default_empty(self):
        return ""


@dataclass(frozen=True)
class IP(Str):
    def check(self, value, path):
        value = super().check(value, path)
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise Invalid(f"{path}: {value!r} is not an IP address") from None


@dataclass(frozen=True)
class Ref(Str):
    """The 24-hex id of another resource (its existence is checked by the service)."""

    kind: str = ""

    def check(self, value, path):
        from kahuna.store.base import is_valid_id

        if not is_valid_id(value):
            raise Invalid(f"{path}: {value!r} is not a {self.kind or 'resource'} id")
        return value


@dataclass(frozen=True)
class ListOf(Type):
    item: Type = field(default_factory=Str)
    max_items: int = 4096

    def check(self, value, path):
        if not isinstance(value, list):
            raise Invalid(f"{path}: expected a list")
        if len(value) > self.max_items:
            raise Invalid(f"{path}: at most {self.max_items} items")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def default_empty(self):
        return []


@dataclass(frozen=True)
class Obj(Type):
    """A nested object with its own fields (no unknown keys, required ones enforced)."""

    fields: tuple = ()

    def check(self, value, path):
        if not isinstance(value, dict):
            raise Invalid(f"{path}: expected an object")
        return check_object(self.fields, value, path, partial=False)

    def default_empty(self):
        return {f.name: f.empty() for f in self.fields if f.required or f.default is not MISSING}


@dataclass(frozen=True)
class Field:
    """One API field of a resource kind.

    `db` is the document path when it differs from the API name (upstream's schema v2 names);
    `read_only` fields are ignored on input and served on output; `write_only` ones are accepted
    and never served; `immutable` ones may be given at creation only (400 on a change);
    `create_only` ones are set at creation and silently ignored on updates (the client's *Update
    models leave them out and upstream ignores them: a template's source, a subnet's CIDR).
    """

    name: str
    type: Type = field(default_factory=Str)
    required: bool = False
    default: Any = MISSING
    read_only: bool = False
    write_only: bool = False
    immutable: bool = False
    create_only: bool = False
    db: str = ""
    validate: Callable[[Any, str], Any] | None = None

    @property
    def doc_key(self) -> str:
        return self.db or self.name

    def empty(self) -> Any:
        if self.default is not MISSING:
            return self.default() if callable(self.default) else self.default
        return self.type.default_empty()

    def check(self, value: Any, path: str) -> Any:
        value = self.type.check(value, path)
        return self.validate(value, path) if self.validate else value


def check_object(fields: tuple[Field, ...], payload: dict, path: str, *, partial: bool) -> dict:
    """Validate `payload` against `fields`: unknown keys 400, missing required 422 (unless partial).

    Answers {api name: checked value} for the writable fields present, defaults filled on a full
    (non-partial) check. Read-only fields present in the payload are ignored, as the client's
    models may send them back.
    """
    by_name = {f.name: f for f in fields}
    unknown = sorted(k for k in payload if k not in by_name)
    if unknown:
        raise Invalid(f"{_join(path, unknown[0])}: unknown field")
    out: dict[str, Any] = {}
    for f in fields:
        if f.read_only:
            continue
        where = _join(path, f.name)
        if f.name in payload and not (payload[f.name] is None and not f.required):
            out[f.name] = f.check(payload[f.name], where)
        elif partial:
            continue
        elif f.required:
            raise Missing(f"{where}: required field is missing")
        elif f.default is not MISSING:
            out[f.name] = f.empty()
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
