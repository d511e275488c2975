"""What the sample backend accepts, validated as the real one validates it: FastAPI's 422 with pydantic 2's
wording and every problem at once, the batch route's per-item defaults, and its grouping by player.

The quirks the proxy must pass through untouched (a1betting-api.md): a bad `line` in a batch item is the route's
500, a `prop_id` of null stays null, mixed priority types break the sort as upstream's do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from proxy.devtools.sample_data import PropFields

_MESSAGES: Final = {  # pydantic 2's wording, which FastAPI's 422 bodies carry
    "missing": "Field required",
    "json_invalid": "JSON decode error",
    "float_parsing": "Input should be a valid number, unable to parse string as a number",
    "int_parsing": "Input should be a valid integer, unable to parse string as an integer",
    "bool_parsing": "Input should be a valid boolean, unable to interpret input",
    "list_type": "Input should be a valid list",
    "dict_type": "Input should be a valid dictionary",
    "string_type": "Input should be a valid string",
    "model_attributes_type": "Input should be a valid dictionary or object to extract fields from",
}


class Rejected(Exception):
    """FastAPI's 422, raised before the handler body runs, with pydantic-style details."""

    def __init__(self, *problems: dict[str, Any]) -> None:
        super().__init__(problems)
        self.problems = list(problems)


class Failed(Exception):
    """An HTTPException, answered in upstream's custom `{"error", "status_code"}` form."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def problem(kind: str, loc: list[str | int], value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": _MESSAGES[kind], "input": value}


def decode_body(raw: bytes) -> Any:
    """A JSON body, or the 422 FastAPI gives for a missing or malformed one."""
    if not raw.strip():
        raise Rejected(problem("missing", ["body"], None))
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise Rejected({**problem("json_invalid", ["body", 0], {}), "ctx": {"error": str(exc)}}) from exc


def query_bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    text = query.get(name, str(default)).lower()
    if text not in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        raise Rejected(problem("bool_parsing", ["query", name], query[name]))
    return text in ("true", "1", "yes", "on")


def query_int(query: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError as exc:
        raise Rejected(problem("int_parsing", ["query", name], query[name])) from exc


def prop_query(query: Mapping[str, str], names: tuple[str, ...] = ()) -> PropFields:
    """The prop fields (and `names`) from a query string, every problem reported at once as pydantic does."""
    required = (*names, "player_name", "stat_type", "line", "team", "matchup")
    problems = [problem("missing", ["query", name], None) for name in required if name not in query]
    try:
        line = float(query.get("line", 0))
    except ValueError:
        problems.append(problem("float_parsing", ["query", "line"], query["line"]))
    if problems:
        raise Rejected(*problems)
    return PropFields(query["player_name"], query["stat_type"], line, query["team"], query["matchup"])


@dataclass(frozen=True)
class Item:
    prop_id: str | None
    fields: PropFields
    priority: Any  # any JSON value: mixed types within one player's group break the sort, as upstream's do


def batch_items(body: Any) -> list[Item]:
    """`BatchPropRequest` validation (422), then the route's per-item defaults; a bad `line` is the route's 500."""
    if not isinstance(body, dict):
        raise Rejected(problem("model_attributes_type", ["body"], body))
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise Rejected(problem("list_type" if "requests" in body else "missing", ["body", "requests"], requests))
    problems = [
        problem("dict_type", ["body", "requests", i], r) for i, r in enumerate(requests) if type(r) is not dict
    ]
    if problems:
        raise Rejected(*problems)
    return [_item(index, item) for index, item in enumerate(requests)]


def _item(index: int, raw: dict[str, Any]) -> Item:
    try:
        line = float(raw.get("line", 0))
    except (TypeError, ValueError) as exc:
        raise Failed(500, f"Batch processing failed: {exc}") from exc
    prop_id = raw["prop_id"] if "prop_id" in raw else f"batch_{index}"  # the default only when the key is absent
    text = [str(raw.get(key, "")) for key in ("player_name", "stat_type", "team", "matchup")]
    fields = PropFields(text[0], text[1], line, text[2], text[3])
    return Item(None if prop_id is None else str(prop_id), fields, raw.get("priority", 1))


def group_by_player(items: list[Item]) -> dict[str, list[Item]]:
    """Upstream's order: grouped by folded name in first-seen order (:181), each group sorted by priority (:186)."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.fields.player_name.lower().strip(), []).append(item)
    return {key: sorted(group, key=lambda item: item.priority) for key, group in groups.items()}
