"""A `[route.batch]` table's wire format, compiled once: a request's fields as a typed batch item, the batch body
built from the rule's template, and a batch reply split back into each item's own answer and failure."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from multidict import MultiMapping

from proxy.config.rules import CompiledRule, Field, field_value

ITEMS: Final = "$items"
_FLOAT: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT: Final = re.compile(r"[+-]?\d+")
# The words pydantic (so a FastAPI single endpoint) reads as booleans in a query string.
_BOOL: Final = {
    "true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
    "false": False, "f": False, "no": False, "n": False, "off": False, "0": False,
}


class Unbatchable(ValueError):
    """A request whose fields cannot become a batch item as the rule declares them: it is sent on its own."""


@dataclass(frozen=True, slots=True)
class ItemField:
    """One field of a batch item: its name in the item, the request part it comes from, and its JSON type."""

    name: str
    ref: Field
    kind: str  # str, int, float or bool

    @classmethod
    def parse(cls, name: str, spec: str) -> ItemField:
        ref, _, kind = spec.partition(":")
        return cls(name, Field.parse(ref), kind or "str")

    def read(self, params: Mapping[str, str], query: MultiMapping[str], headers: MultiMapping[str]) -> object:
        """The typed value in one request; absent, repeated or mistyped values are left to the single endpoint."""
        if self.ref.source == "path":
            values = [params[self.ref.name]] if self.ref.name in params else []
        else:
            values = (query if self.ref.source == "query" else headers).getall(self.ref.name, [])
        if len(values) != 1:
            raise Unbatchable(f"`{self.ref.source}.{self.ref.name}` is absent or repeated")
        text = values[0]
        if self.kind == "str":
            return text
        if self.kind == "bool":
            if (flag := _BOOL.get(text.lower())) is None:
                raise Unbatchable(f"`{self.ref.name}` = {text!r} is not a boolean")
            return flag
        if self.kind == "int" and _INT.fullmatch(text):
            return int(text)
        if self.kind == "float" and _FLOAT.fullmatch(text) and math.isfinite(number := float(text)):
            return number
        raise Unbatchable(f"`{self.ref.name}` = {text!r} is not a finite {self.kind}")

    def render(self, value: object) -> str:
        """The request text for an item's JSON value (the inverse of read), for keying a client's own batch items."""
        if self.kind == "str" and isinstance(value, str):
            return value
        if self.kind == "bool" and isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unbatchable(f"`{self.name}` = {value!r} is not a {self.kind}")
        if self.kind == "int" and isinstance(value, int):
            return str(value)
        if self.kind == "float" and math.isfinite(value):
            # As a browser writes numbers into a URL: 2.0 is "2", 1.5 is "1.5".
            return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))
        raise Unbatchable(f"`{self.name}` = {value!r} is not a finite {self.kind}")


class BatchSpec:
    """A `[route.batch]` table compiled once: typed item fields, the body template, the reply's shape."""

    def __init__(self, rule: CompiledRule) -> None:
        b = rule.route.batch
        if b is None:
            raise ValueError(f"rule {rule.name!r} has no [route.batch] table")
        method, _, path = b.to.strip().partition(" ")
        self.method, self.path = method, path.strip()
        self.fields = tuple(ItemField.parse(name, spec) for name, spec in b.item.items())
        self.group = Field.parse(b.group_by)
        self.match_on, self.results, self.failures = b.match_on, b.results, b.failures
        self.template = b.body
        self.items_at = _path_to_items(b.body)
        self._reply: msgspec.json.Decoder[Any] = msgspec.json.Decoder(msgspec.defstruct("BatchReply", [
            ("results", list[msgspec.Raw], msgspec.field(name=b.results)),
            ("failures", list[Any], msgspec.field(default_factory=list, name=b.failures)),
        ]))
        self._id: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            msgspec.defstruct("ItemId", [("id", Any, msgspec.field(default=None, name=b.match_on))])
        )

    def item(self, params: Mapping[str, str], query: MultiMapping[str], headers: MultiMapping[str]) -> dict[str, Any]:
        return {f.name: f.read(params, query, headers) for f in self.fields}

    def group_of(self, params: Mapping[str, str], query: Mapping[str, str], headers: Mapping[str, str]) -> str:
        return field_value(self.group, params, query, headers)

    def items_in(self, doc: Any) -> list[Any] | None:
        """The item list inside a client's own batch body, or None when the body has another shape."""
        for step in self.items_at:
            if isinstance(step, str) and isinstance(doc, dict) and step in doc:
                doc = doc[step]
            elif isinstance(step, int) and isinstance(doc, list) and step < len(doc):
                doc = doc[step]
            else:
                return None
        return doc if isinstance(doc, list) else None

    def body(self, items: list[dict[str, Any]], base: Any = None) -> bytes:
        """The batch body: the rule's template (or a client's own body) with `items` where its items go."""
        doc: Any = copy.deepcopy(self.template if base is None else base)
        if not self.items_at:
            return msgspec.json.encode(items)
        parent: Any = doc
        for step in self.items_at[:-1]:
            parent = parent[step]
        parent[self.items_at[-1]] = items
        return msgspec.json.encode(doc)

    def split(self, body: bytes) -> tuple[dict[str, bytes], dict[str, dict[str, Any]], list[Any]]:
        """Results by id (any order), failures by id, and failures without one; DecodeError if not the shape."""
        reply = self._reply.decode(body)
        answers: dict[str, bytes] = {}
        for raw in reply.results:
            try:
                rid = self._id.decode(raw).id
            except msgspec.DecodeError:
                continue  # not an object: nobody's answer, so its item counts as missing
            if rid is not None:
                answers.setdefault(str(rid), bytes(raw))
        failed: dict[str, dict[str, Any]] = {}
        anonymous: list[Any] = []
        for entry in reply.failures:
            if isinstance(entry, dict) and entry.get(self.match_on) is not None:
                failed.setdefault(str(entry[self.match_on]), entry)
            else:
                anonymous.append(entry)
        return answers, failed, anonymous

    def with_id(self, body: bytes, value: object) -> bytes:
        """The body with the match_on field set to a caller's own id, as the single endpoint would echo it."""
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body
        if not isinstance(doc, dict) or (self.match_on in doc and doc[self.match_on] == value):
            return body
        doc[self.match_on] = value
        return msgspec.json.encode(doc)


def _path_to_items(template: Any) -> tuple[str | int, ...]:
    """Where "$items" sits in the body template, as keys and indexes from the top."""
    if template == ITEMS:
        return ()
    children = template.items() if isinstance(template, dict) else enumerate(template) if isinstance(
        template, list) else ()
    for step, value in children:
        try:
            return (step, *_path_to_items(value))
        except LookupError:
            continue
    raise LookupError(f"no {ITEMS!r} in the batch body template")
