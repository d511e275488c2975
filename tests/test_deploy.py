"""The deployment examples under config/ hold what the proxy really does: metric names, ports, probes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp

from tests.support.processes import ROOT, free_port, serve
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series(exposition: str) -> set[str]:
    """Every series name a scrape can hold: sample lines, plus what each `# TYPE` line promises."""
    names = set(re.findall(r"^([a-z_:][a-z0-9_:]*)[{ ]", exposition, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        base = name.removesuffix("_total")
        names |= {base + s for s in SUFFIXES.get(kind, ("",))}
    return names


def referenced(dashboard: dict) -> set[str]:  # type: ignore[type-arg]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(re.search(r"sidecache_", e) for e in exprs)
    queries = [v["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), str)]
    return {m for e in exprs + queries for m in re.findall(r"\bsidecache_[a-z0-9_]+", e)}


async def test_grafana_dashboard_uses_only_metric_names_a_running_proxy_exports(upstream: Upstream,
                                                                                tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    metrics_port = free_port()
    with serve("--rules", str(rules), "--upstream", upstream.url, "--metrics", f"127.0.0.1:{metrics_port}") as sp:
        async with aiohttp.ClientSession() as http:
            for path in ("/players/a", "/players/a", "/players/b"):
                async with http.get(sp.proxy_url + path) as r:
                    await r.read()
            metrics_url = f"http://127.0.0.1:{metrics_port}"
            async with http.get(metrics_url + "/metrics") as r:
                assert r.status == 200
                scrape = await r.text()
            async with http.get(sp.admin_url + "/metrics") as r:
                assert exported_series(await r.text()) == exported_series(scrape)
            # the metrics listener is read-only: nothing there purges, warms, reloads or shows route details
            async with http.post(metrics_url + "/purge", json={"all": True}) as r:
                assert r.status == 404
            for path in ("/stats", "/", "/rules"):
                async with http.get(metrics_url + path) as r:
                    assert r.status == 404, path
            async with http.get(metrics_url + "/healthz") as r:
                assert r.status == 200
    assert 'sidecache_requests_total{outcome="hit",route="player"} 1.0' in scrape
    dashboard = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    used = referenced(dashboard)
    assert used - exported_series(scrape) == set()
    assert {"sidecache_requests_total", "sidecache_upstream_requests_total", "sidecache_cache_bytes",
            "sidecache_request_duration_seconds_bucket", "sidecache_redis_up"} <= used


def test_kubernetes_pod_keeps_the_admin_listener_inside_the_pod() -> None:
    pod = (ROOT / "config" / "kubernetes-pod.yaml").read_text()
    spec = "\n".join(line.split("#")[0] for line in pod.splitlines())  # what Kubernetes reads, comments dropped
    assert re.search(r"- --admin\n\s+- 127\.0\.0\.1:9901\n", spec)
    assert re.search(r"- --listen\n\s+- 0\.0\.0\.0:8080\n", spec)
    assert re.findall(r"containerPort: (\d+)", spec) == ["8080", "9902"]  # no 9901: admin never leaves the pod
    probe = spec[spec.index("readinessProbe:"):spec.index("livenessProbe:")]
    assert "exec:" in probe and "http://127.0.0.1:9901/readyz" in probe
    assert "targetPort: http" in spec and "--upstream\n        - http://127.0.0.1:8000" in spec


def test_prometheus_scrapes_the_port_the_pod_names() -> None:
    prom = (ROOT / "config" / "prometheus.yml").read_text()
    pod = (ROOT / "config" / "kubernetes-pod.yaml").read_text()
    [port_name] = re.findall(r"regex: (\S+)", prom)
    assert f"name: {port_name}\n          containerPort: 9902" in pod
    assert "metrics_path: /metrics" in prom
