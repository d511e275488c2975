"""The sample backend over real HTTP: the shapes and quirks that a1betting-api.md describes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from aiohttp import ClientSession, web

from proxy.devtools.sample_backend import SampleBackend
from proxy.devtools.sample_data import ROSTER, PropFields, analyse_prop, player_id, player_team
from tests.support.processes import ROOT

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient
    from pytest_aiohttp import AiohttpClient

    Client = TestClient[web.Request, web.Application]

API = "/api/v1/optimized"
BATCH = f"{API}/batch-prop-analysis"
PROP = {"player_name": "Aaron Judge", "stat_type": "hits", "line": "1.5", "team": "NYY", "matchup": "NYY vs BOS"}
ENRICHED_KEYS = [
    "player_info",
    "summary",
    "deep_analysis",
    "statistics",
    "insights",
    "prop_id",
    "stat_type",
    "line",
    "recommendation",
    "confidence",
]


@pytest.fixture
def backend() -> SampleBackend:
    return SampleBackend()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: SampleBackend) -> Client:
    return await aiohttp_client(backend.app())


def item(name: str, prop_id: str, **extra: Any) -> dict[str, Any]:
    prop = {"prop_id": prop_id, "player_name": name, "stat_type": "hits", "line": 1.5}
    return {**prop, "team": "NYY", "matchup": "NYY vs BOS", **extra}


async def post_batch(client: Client, items: list[dict[str, Any]], **body: Any) -> Any:
    response = await client.post(BATCH, json={"requests": items, **body})
    assert response.status == 200
    return await response.json()


async def get_prop(client: Client, prop_id: str, **query: str) -> bytes:
    response = await client.get(f"/mlb/enhanced-prop-analysis/{prop_id}", params={**PROP, **query})
    assert response.status == 200
    return await response.read()


def test_roster_mixes_real_and_generated_players_with_stable_ids() -> None:
    assert len(set(ROSTER)) >= 250
    assert {"Aaron Judge", "Mookie Betts", "Shohei Ohtani", "Juan Soto", "Freddie Freeman"} <= set(ROSTER)
    ids = [player_id(name) for name in ROSTER]
    assert None not in ids and len(set(ids)) == len(ROSTER)
    assert player_id("  aaron JUDGE ") == player_id("Aaron Judge")
    assert player_id("Nobody In Particular") is None
    assert player_team("Aaron Judge") == "NYY" and all(player_team(name) for name in ROSTER)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/mlb/enhanced-prop-analysis/p1?player_name=x", 422),
        ("POST", BATCH, 422),
        ("GET", f"{API}/player-data/Nobody", 404),
        ("GET", "/no/such/route", 404),
    ],
)
async def test_every_response_has_upstream_headers_and_no_validators(
    client: Client, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)
    assert response.status == status
    assert response.headers["Server"] == "A1Betting/2.0"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert float(response.headers["X-Process-Time"]) >= 0
    assert response.content_type == "application/json"
    assert not {"Cache-Control", "ETag", "Last-Modified", "Expires"} & set(response.headers)


async def test_health(client: Client) -> None:
    response = await client.get("/health")
    assert await response.json() == {"status": "ok"}


async def test_prop_analysis_is_a_bare_enriched_prop(client: Client) -> None:
    prop = msgspec.json.decode(await get_prop(client, "p-1"))
    assert list(prop) == ENRICHED_KEYS
    assert prop["player_info"] == {
        "name": "Aaron Judge",
        "team": "NYY",
        "position": prop["player_info"]["position"],
        "image_url": None,
        "score": None,
    }
    assert (prop["prop_id"], prop["stat_type"], prop["line"]) == ("p-1", "hits", 1.5)
    assert "1.5" in prop["summary"] and "\n" in prop["deep_analysis"]
    labels = ["L5 Games", "L10 Games", "Season Avg", "vs Opponent", "Home/Away", "Recent Form"]
    assert [stat["label"] for stat in prop["statistics"]] == labels
    assert all(isinstance(stat["value"], float) for stat in prop["statistics"])
    kinds = {"performance_trend", "matchup_advantage", "statistical_edge", "weather_impact"}
    assert {insight["type"] for insight in prop["insights"]} <= kinds
    assert (prop["recommendation"], prop["confidence"]) == ("", 0.0)


async def test_prop_analysis_depends_on_the_five_fields_and_only_echoes_prop_id(client: Client) -> None:
    first = await get_prop(client, "p-1")
    assert await get_prop(client, "p-1") == first
    renamed = msgspec.json.decode(await get_prop(client, "other"))
    assert {**renamed, "prop_id": "p-1"} == msgspec.json.decode(first)
    for change in ({"team": "BOS"}, {"matchup": "NYY vs TOR"}, {"line": "2.5"}, {"stat_type": "runs"}):
        assert await get_prop(client, "p-1", **change) != first
    assert msgspec.json.decode(await get_prop(client, "p-1", team="BOS"))["player_info"]["team"] == "BOS"


async def test_analyse_prop_builds_the_body_the_route_serves(client: Client) -> None:
    expected = analyse_prop("p-1", PropFields("Aaron Judge", "hits", 1.5, "NYY", "NYY vs BOS"))
    assert await get_prop(client, "p-1") == msgspec.json.encode(expected)


@pytest.mark.parametrize("name", ["Nobody In Particular", "Mookie Betts"])
async def test_prop_analysis_is_null_with_200_when_the_player_fails(
    client: Client, backend: SampleBackend, name: str
) -> None:
    backend.failing_players = {"MOOKIE BETTS"}
    assert await get_prop(client, "p-1", player_name=name) == b"null"


async def test_prop_analysis_reports_every_bad_query_field_with_422(client: Client) -> None:
    response = await client.get("/mlb/enhanced-prop-analysis/p1", params={"player_name": "x", "line": "high"})
    assert response.status == 422
    detail = (await response.json())["detail"]
    assert [(problem["type"], problem["loc"]) for problem in detail] == [
        ("missing", ["query", "stat_type"]),
        ("missing", ["query", "team"]),
        ("missing", ["query", "matchup"]),
        ("float_parsing", ["query", "line"]),
    ]
    assert detail[0]["msg"] == "Field required" and detail[3]["input"] == "high"


async def test_batch_props_are_byte_identical_to_single_gets(client: Client) -> None:
    items = [item("Aaron Judge", "a"), item("Juan Soto", "b", line=2, team="NYM"), item("Shohei Ohtani", "c")]
    response = await client.post(BATCH, json={"requests": items})
    successful = msgspec.json.decode(await response.read())["successful"]  # msgspec keeps the key order
    assert len(successful) == 3
    sent = {request["prop_id"]: request for request in items}
    for prop in successful:
        query = {key: str(sent[prop["prop_id"]][key]) for key in PROP}
        assert msgspec.json.encode(prop) == await get_prop(client, prop["prop_id"], **query)


async def test_batch_orders_by_player_group_then_priority_not_request_order(client: Client) -> None:
    items = [
        item("Aaron Judge", "judge-low", priority=3),
        item("Mookie Betts", "betts-1", priority=1),
        item("Aaron Judge", "judge-high", priority=1),
        item(" aaron judge ", "judge-mid", priority=2),
        item("Shohei Ohtani", "ohtani"),
        item("Mookie Betts", "betts-2", priority=1),
    ]
    result = await post_batch(client, items)
    order = [prop["prop_id"] for prop in result["successful"]]
    assert order == ["judge-high", "judge-mid", "judge-low", "betts-1", "betts-2", "ohtani"]


async def test_batch_drops_items_beyond_50_silently(client: Client) -> None:
    items = [item(ROSTER[n % 7], f"p{n}") for n in range(60)]
    result = await post_batch(client, items)
    assert {prop["prop_id"] for prop in result["successful"]} == {f"p{n}" for n in range(50)}
    assert result["failed"] == []
    assert result["performance"]["total_processed"] == 50
    assert result["optimization"]["batch_size"] == 60


async def test_batch_item_defaults(client: Client) -> None:
    without_id = {key: value for key, value in item("Aaron Judge", "x").items() if key != "prop_id"}
    items = [without_id, {"player_name": "Aaron Judge", "line": "2"}, {**item("Aaron Judge", "x"), "prop_id": None}]
    props = (await post_batch(client, items))["successful"]
    assert [prop["prop_id"] for prop in props] == ["batch_0", "batch_1", None]
    assert (props[1]["stat_type"], props[1]["line"], props[1]["player_info"]["team"]) == ("", 2.0, "")


async def test_batch_fails_unknown_and_failing_players_with_their_prop_id(
    client: Client, backend: SampleBackend
) -> None:
    backend.failing_players = {"mookie BETTS"}
    items = [item("Mookie Betts", "betts"), item("Aaron Judge", "judge"), item("Nobody In Particular", "nobody")]
    result = await post_batch(client, items)
    assert [prop["prop_id"] for prop in result["successful"]] == ["judge"]
    assert [(entry["prop_id"], entry["type"]) for entry in result["failed"]] == [
        ("betts", "player_not_found"),
        ("nobody", "player_not_found"),
    ]
    assert all(entry["error"] for entry in result["failed"])
    assert (result["performance"]["successful_count"], result["performance"]["failed_count"]) == (1, 2)


async def test_batch_group_error_is_one_failed_entry_without_prop_id(client: Client, backend: SampleBackend) -> None:
    backend.group_error_players = {"Juan Soto"}
    items = [item("Juan Soto", "soto-1"), item("Aaron Judge", "judge"), item("juan soto", "soto-2")]
    result = await post_batch(client, items)
    assert [prop["prop_id"] for prop in result["successful"]] == ["judge"]
    assert len(result["failed"]) == 1
    assert set(result["failed"][0]) == {"error", "type"} and result["failed"][0]["type"] == "player_group_error"


async def test_batch_mixed_priorities_are_a_200_with_a_batch_processing_error(client: Client) -> None:
    result = await post_batch(client, [item("Aaron Judge", "a", priority=1), item("Aaron Judge", "b", priority="high")])
    assert result["successful"] == []
    assert [set(entry) for entry in result["failed"]] == [{"error", "type"}]
    assert result["failed"][0]["type"] == "batch_processing_error"
    assert (result["performance"]["total_processed"], result["performance"]["cache_hit_rate"]) == (0, 0.0)


async def test_batch_processes_duplicate_prop_ids_separately(client: Client) -> None:
    result = await post_batch(client, [item("Aaron Judge", "same"), item("Aaron Judge", "same", line=0.5)])
    assert [prop["line"] for prop in result["successful"]] == [1.5, 0.5]


async def test_batch_performance_blocks_report_a_global_cumulative_hit_rate(client: Client) -> None:
    items = [item("Aaron Judge", "a"), item("Juan Soto", "b")]
    first = await post_batch(client, items, use_cache=False, warm_cache=True)
    second = await post_batch(client, items)
    assert set(first["performance"]) == {
        "total_processed",
        "processing_time",
        "cache_hit_rate",
        "successful_count",
        "failed_count",
    }
    assert first["optimization"] == {"batch_size": 2, "cache_enabled": False, "cache_warming": True}
    assert second["optimization"] == {"batch_size": 2, "cache_enabled": True, "cache_warming": True}
    assert (first["performance"]["cache_hit_rate"], second["performance"]["cache_hit_rate"]) == (0.0, 0.5)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b"", ["body"]),
        (b"{not json", ["body", 0]),
        (b"[]", ["body"]),
        (b"{}", ["body", "requests"]),
        (b'{"requests": {"a": 1}}', ["body", "requests"]),
        (b'{"requests": [1]}', ["body", "requests", 0]),
    ],
)
async def test_batch_rejects_malformed_bodies_with_422(client: Client, body: bytes, loc: list[Any]) -> None:
    response = await client.post(BATCH, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 422
    assert [problem["loc"] for problem in (await response.json())["detail"]] == [loc]


async def test_batch_non_numeric_line_is_a_500(client: Client) -> None:
    response = await client.post(BATCH, json={"requests": [item("Aaron Judge", "a"), item("Juan Soto", "b", line="x")]})
    assert response.status == 500
    assert await response.json() == {
        "error": "Batch processing failed: could not convert string to float: 'x'",
        "status_code": 500,
    }


async def test_fail_batch_status_knob(client: Client, backend: SampleBackend) -> None:
    backend.fail_batch_status = 503
    response = await client.post(BATCH, json={"requests": [item("Aaron Judge", "a")]})
    assert response.status == 503
    body = await response.json()
    assert body["status_code"] == 503 and body["error"].startswith("Batch processing failed")
    assert backend.calls["batch-prop-analysis"] == 1


async def test_batch_garbage_knob_answers_200_with_a_body_that_is_not_json(
    client: Client, backend: SampleBackend
) -> None:
    backend.batch_garbage = True
    response = await client.post(BATCH, json={"requests": [item("Aaron Judge", "a")]})
    assert response.status == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(await response.read())


async def test_batch_fails_all_knob_fails_every_prop_that_the_single_endpoint_answers(
    client: Client, backend: SampleBackend
) -> None:
    backend.batch_fails_all = True  # the real batch path without its own cache
    body = await post_batch(client, [item("Aaron Judge", "a"), item("Mookie Betts", "b")])
    assert body["successful"] == []
    assert [(f["prop_id"], f["type"]) for f in body["failed"]] == [("a", "player_not_found"), ("b", "player_not_found")]
    single = await client.get("/mlb/enhanced-prop-analysis/a", params=PROP)
    assert (await single.json())["player_info"]["name"] == "Aaron Judge"


async def test_knobs_can_be_set_over_http_for_a_backend_in_another_process(
    client: Client, backend: SampleBackend
) -> None:
    response = await client.post("/_sample/knobs", json={"batch_latency": 0.01, "batch_fails_all": True})
    assert await response.json() == {"batch_latency": 0.01, "batch_fails_all": True}
    assert (backend.batch_latency, backend.batch_fails_all) == (0.01, True)
    assert backend.calls == {}  # not recorded as a call
    backend.reset()
    assert backend.batch_fails_all is False


async def test_enhanced_post_wraps_the_same_analysis(client: Client, backend: SampleBackend) -> None:
    response = await client.post(f"{API}/enhanced-prop-analysis", params={**PROP, "prop_id": "p-1"}, data=b"ignored")
    body = msgspec.json.decode(await response.read())
    assert list(body) == ["analysis", "performance"]
    assert msgspec.json.encode(body["analysis"]) == await get_prop(client, "p-1")
    assert set(body["performance"]) == {"processing_time", "optimization_used"}
    backend.failing_players = {"Aaron Judge"}
    failing = await client.post(f"{API}/enhanced-prop-analysis", params={**PROP, "prop_id": "p-1"})
    assert failing.status == 404
    assert await failing.json() == {"error": "Enhanced analysis could not be generated", "status_code": 404}
    missing = await client.post(f"{API}/enhanced-prop-analysis", params=PROP)
    assert missing.status == 422
    assert (await missing.json())["detail"][0]["loc"] == ["query", "prop_id"]


async def test_player_data_shape_and_its_cache_hit_variant(client: Client) -> None:
    url = f"{API}/player-data/Aaron Judge"
    first = await (await client.get(url, params=[("stat_types", "hits"), ("stat_types", "runs")])).json()
    data = first["player_data"]
    assert list(data) == ["player_id", "player_info", "game_logs", "season_stats", "stat_types", "fetched_at"]
    assert data["player_id"] == player_id("Aaron Judge") and data["player_info"] == {}
    assert data["game_logs"]["stats"][0]["type"] == "gameLog" and data["game_logs"]["current_team"] == "NYY"
    assert data["season_stats"]["hits"] == data["season_stats"]["runs"]  # stat_type never reaches the MLB call
    assert data["season_stats"]["hits"]["stats"][0]["type"] == "season"
    assert first["optimization"] == {
        "cache_used": True,
        "stat_types_requested": ["hits", "runs"],
        "fetched_at": data["fetched_at"],
    }
    again = (await (await client.get(url, params=[("stat_types", "runs"), ("stat_types", "hits")])).json())[
        "player_data"
    ]
    assert "stat_types" not in again and again["fetched_at"] == data["fetched_at"]
    refreshed = await (await client.get(url, params={"stat_types": "hits", "force_refresh": "true"})).json()
    assert "stat_types" in refreshed["player_data"] and refreshed["optimization"]["cache_used"] is False


async def test_player_data_defaults_and_errors(client: Client, backend: SampleBackend) -> None:
    default = await (await client.get(f"{API}/player-data/Juan Soto")).json()
    assert default["player_data"]["stat_types"] == ["hits", "runs", "home_runs"]
    unknown = await client.get(f"{API}/player-data/Nobody")
    assert (unknown.status, await unknown.json()) == (
        404,
        {"error": "Player data not found for Nobody", "status_code": 404},
    )
    backend.failing_players = {"juan soto"}
    assert (await client.get(f"{API}/player-data/Juan Soto")).status == 404
    bad = await client.get(f"{API}/player-data/Aaron Judge", params={"force_refresh": "maybe"})
    assert bad.status == 422 and (await bad.json())["detail"][0]["type"] == "bool_parsing"


async def test_warm_cache_takes_a_bare_array_and_rejects_the_frontends_object(client: Client) -> None:
    url = f"{API}/warm-cache"
    response = await client.post(url, params={"stat_types": "hits"}, json=["Aaron Judge", "Mookie Betts"])
    warming = (await response.json())["cache_warming"]
    assert {k: warming[k] for k in ("players_warmed", "stat_types", "status")} == {
        "players_warmed": 2,
        "stat_types": ["hits"],
        "status": "completed",
    }
    warmed = await (await client.get(f"{API}/player-data/Aaron Judge", params={"stat_types": "hits"})).json()
    assert "stat_types" not in warmed["player_data"]  # served from the warmed cache
    rejected = await client.post(url, json={"player_names": ["Aaron Judge"], "stat_types": ["hits"]})
    assert rejected.status == 422
    assert (await rejected.json())["detail"][0]["loc"] == ["body"]


async def test_performance_metrics_are_live(client: Client) -> None:
    url = f"{API}/performance-metrics"
    first = await (await client.get(url)).json()
    assert list(first) == ["cache_metrics", "processing_metrics", "optimization_stats", "timestamp"]
    assert set(first["cache_metrics"]) == {
        "hits",
        "misses",
        "hit_rate",
        "evictions",
        "memory_cache_size",
        "max_memory_cache_size",
    }
    datetime.fromisoformat(first["timestamp"])
    await post_batch(client, [item("Aaron Judge", "a"), item("Nobody", "b")])
    second = await (await client.get(url)).json()
    assert second["processing_metrics"]["total_requests"] == first["processing_metrics"]["total_requests"] + 2
    assert second["processing_metrics"]["total_batches"] == 1
    assert second["processing_metrics"]["error_rate"] == 0.5
    assert second["cache_metrics"]["misses"] == 1


async def test_cache_stats_grade_the_hit_rate(client: Client) -> None:
    url = f"{API}/cache-stats"
    cold = await (await client.get(url)).json()
    assert cold["cache_performance"] == {
        "hit_rate": 0.0,
        "total_hits": 0,
        "total_misses": 0,
        "evictions": 0,
        "memory_usage": {"current_size": 0, "max_size": 500, "utilization": 0.0},
    }
    assert cold["optimization_insights"] == {
        "cache_efficiency": "needs_improvement",
        "recommendations": ["Consider increasing cache TTL for stable data"],
    }
    for _ in range(11):
        await client.get(f"{API}/player-data/Aaron Judge")
    warm = await (await client.get(url)).json()
    assert warm["cache_performance"]["total_hits"] == 10
    assert warm["optimization_insights"] == {
        "cache_efficiency": "excellent",
        "recommendations": ["Cache performance is excellent"],
    }


async def test_benchmark_shape_and_its_division_by_zero(client: Client) -> None:
    url = f"{API}/benchmark-performance"
    body = await (await client.post(url)).json()
    assert body["benchmark_config"] == {
        "players": ["Aaron Judge", "Mookie Betts", "Shohei Ohtani"],
        "stat_types": ["hits", "runs", "home_runs"],
        "iterations": 3,
    }
    assert len(body["results"]["optimized_times"]) == 3 and body["results"]["standard_times"] == []
    assert body["summary"]["performance_grade"] in {"excellent", "good", "needs_improvement"}
    assert body["summary"]["cache_hit_rate"] == pytest.approx(6 / 9)
    zero = await client.post(url, params={"iterations": "0"})
    assert (zero.status, await zero.json()) == (
        500,
        {"error": "Benchmark failed: division by zero", "status_code": 500},
    )
    assert (await client.post(url, params={"iterations": "x"})).status == 422


async def test_per_source_routes(client: Client, backend: SampleBackend) -> None:
    judge = player_id("Aaron Judge")
    found = await (await client.get("/api/v1/players/aaron judge/id")).json()
    assert found == {"player_name": "Aaron Judge", "player_id": judge}
    logs = await (await client.get(f"/api/v1/players/{judge}/game-logs")).json()
    assert logs["player_id"] == judge
    assert [(s["type"], s["group"], s["season"]) for s in logs["stats"]] == [("gameLog", "hitting", "2025")]
    season = await (await client.get(f"/api/v1/players/{judge}/season-stats", params={"stat_type": "runs"})).json()
    assert (season["player_id"], season["stat_type"]) == (judge, "runs") and season["stats"]["games"] == 120
    assert (await client.get(f"/api/v1/players/{judge}/season-stats")).status == 422
    for path in ("/api/v1/players/Nobody/id", "/api/v1/players/1/game-logs", "/api/v1/players/abc/season-stats"):
        assert (await client.get(path, params={"stat_type": "hits"})).status == 404
    assert [backend.calls[name] for name in ("player-id", "game-logs", "season-stats")] == [2, 2, 3]


async def test_calls_and_received_record_every_request(client: Client, backend: SampleBackend) -> None:
    await client.get("/mlb/enhanced-prop-analysis/p1", params=PROP, headers={"Authorization": "Bearer t"})
    await client.post(BATCH, json={"requests": []})
    await client.get("/nowhere")
    assert backend.calls == {"prop-analysis": 1, "batch-prop-analysis": 1, "unmatched": 1}
    single, batch, stray = backend.received
    assert (single.route, single.method, single.path) == ("prop-analysis", "GET", "/mlb/enhanced-prop-analysis/p1")
    assert single.query_string.startswith("player_name=Aaron+Judge&stat_type=hits&") and single.body == b""
    assert single.headers["Authorization"] == "Bearer t"
    assert (batch.method, msgspec.json.decode(batch.body)) == ("POST", {"requests": []})
    assert stray.route == "unmatched"


async def test_unknown_routes_and_methods_answer_fastapis_defaults(client: Client) -> None:
    response = await client.get("/nowhere")
    assert (response.status, await response.json()) == (404, {"detail": "Not Found"})
    wrong_method = await client.get(BATCH)
    assert (wrong_method.status, await wrong_method.json()) == (405, {"detail": "Method Not Allowed"})
    assert wrong_method.headers["Allow"] == "POST"


async def test_reset_forgets_calls_faults_and_cache(client: Client, backend: SampleBackend) -> None:
    await client.get(f"{API}/player-data/Aaron Judge")
    backend.failing_players, backend.group_error_players = {"Aaron Judge"}, {"Juan Soto"}
    backend.fail_batch_status, backend.batch_garbage = 500, True
    backend.reset()
    assert (backend.calls, backend.received) == ({}, [])
    assert (backend.failing_players, backend.group_error_players) == (set(), set())
    assert backend.fail_batch_status is None and backend.batch_garbage is False
    again = await (await client.get(f"{API}/player-data/Aaron Judge")).json()
    assert "stat_types" in again["player_data"]  # a miss again


async def test_requests_are_recorded_before_the_latency(aiohttp_client: AiohttpClient) -> None:
    backend = SampleBackend(latency=0.3)
    client = await aiohttp_client(backend.app())
    tasks = [asyncio.create_task(client.get("/health")) for _ in range(5)]
    deadline = time.monotonic() + 0.25
    while len(backend.received) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert len(backend.received) == 5 and not any(task.done() for task in tasks)
    for response in await asyncio.gather(*tasks):
        assert response.status == 200


async def test_batch_latency_defaults_to_latency_and_can_differ(aiohttp_client: AiohttpClient) -> None:
    assert SampleBackend(latency=0.05).batch_latency == 0.05
    client = await aiohttp_client(SampleBackend(latency=0.0, batch_latency=0.2).app())
    started = time.monotonic()
    await client.get("/health")
    quick = time.monotonic() - started
    await client.post(BATCH, json={"requests": []})
    assert quick < 0.15 and time.monotonic() - started >= 0.2


async def test_module_runs_as_a_loopback_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "proxy.devtools.sample_backend", "--port", str(port), "--latency", "0"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        assert response.headers["Server"] == "A1Betting/2.0"
                        assert await response.json() == {"status": "ok"}
                        break
                except OSError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("python -m proxy.devtools.sample_backend did not answer within 10 s")
    finally:
        server.terminate()
        server.wait(timeout=10)
