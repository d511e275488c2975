"""The `sidecache` command: serve, check, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final

from proxy import __version__
from proxy.cache.redis.tier import open_redis
from proxy.config.reload import Overrides, Sources
from proxy.config.rules import RuleSet, load_rules
from proxy.config.settings import Config, apply_overrides, check_admin_exposure, check_workers, load_config
from proxy.errors import ConfigError, ListenerError
from proxy.telemetry.logs import LEVELS, configure

BUNDLED: Final = Path(__file__).parent / "defaults"  # the A1Betting rules, used when there is no ./rules
BENCH_TIME: Final = "4-5 min with wrk installed, longer with the built-in load generator"  # docs/benchmark.md
BENCH_QUICK_TIME: Final = "about 2 min"
_GC_YOUNG: Final = 10_000  # allocations between young collections in a serving process (CPython's default: 700)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="proxy config file (TOML); default: built-in defaults")
    p.add_argument("--rules", type=Path, action="append",
                   help="rules file or folder of *.toml (repeatable); "
                        "default: ./rules, else the bundled A1Betting rules")


def _logging() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", choices=LEVELS, default="info", help="application log level (info)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="application log on stderr as text or JSON lines (text)")
    return p


def _overrides(p: argparse.ArgumentParser) -> None:
    """The flags that layer over the config file: `serve` runs with them, `check` validates with them."""
    p.add_argument("--upstream", help="backend URL (env SIDECACHE_UPSTREAM)")
    p.add_argument("--redis", help="Redis URL for the shared tier (env SIDECACHE_REDIS_URL)")
    p.add_argument("--redis-mode", choices=["single", "cluster", "sentinel"],
                   help="kind of Redis: one server, a Redis Cluster or a Sentinel set (env SIDECACHE_REDIS_MODE)")
    p.add_argument("--listen", help="proxy listener HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument("--admin", help="admin listener HOST:PORT (default 127.0.0.1:9901)")
    p.add_argument("--workers", type=int, help="processes sharing the proxy port (SO_REUSEPORT)")
    p.add_argument("--metrics", help="read-only listener HOST:PORT for Prometheus: /metrics, /healthz, /readyz")
    p.add_argument("--access-log", action="store_const", const=True, default=None,
                   help="one JSON line per request on stdout (config: [server] access_log)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sidecache", description="A caching reverse-proxy sidecar.")
    ap.add_argument("--version", action="version", version=f"sidecache {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    logs = _logging()
    serve = sub.add_parser("serve", help="run the proxy", parents=[logs])
    _common(serve)
    _overrides(serve)
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--state-dir", type=Path, default=None, help=argparse.SUPPRESS)  # the supervisor's, for workers
    check = sub.add_parser("check", help="validate config and rules as `serve` with the same flags and environment "
                                         "would run them; exit 2 on error", parents=[logs])
    _common(check)
    _overrides(check)
    demo = sub.add_parser("demo", help="sample backend + proxy + a burst of traffic, then the numbers",
                          parents=[logs])
    _common(demo)
    bench_about = f"the reference benchmark: proxy vs direct, printed as ratios ({BENCH_TIME})"
    bench = sub.add_parser("bench", help=bench_about, description=bench_about + ".", parents=[logs])
    bench.add_argument("--quick", action="store_true", help=f"a shorter run ({BENCH_QUICK_TIME})")
    bench.add_argument("--latency", type=float, default=0.05, help="sample backend latency, seconds (0.05)")
    bench.add_argument("--json", type=Path, help="also write the results here")
    bench.add_argument("--png", type=Path, help="also draw the targets as a chart (needs Debian's chromium)")
    bench.add_argument("--batch-extra", type=float, default=0.05,
                       help="how much slower the batch call is than a single one in the 6-connection screen, s (0.05)")
    bench.add_argument("--only", help="comma-separated scenarios: hits,coalescing,trace,props,screens,failing,memory")
    return ap


def default_rules(given: list[Path] | None) -> list[Path]:
    """The given files, else ./rules, else the A1Betting rules shipped inside the package."""
    if given:
        return given
    local = Path("rules")
    return [local] if local.is_dir() else [BUNDLED]


def rules_summary(rules: RuleSet) -> list[str]:
    """Which rules files are in force, said plainly when they are the bundled A1Betting ones, then any warnings."""
    if rules.files and all(f.parent == BUNDLED for f in rules.files):
        lines = [f"rules: {len(rules.rules)} bundled A1Betting rules from {', '.join(map(str, rules.files))} (no "
                 "./rules folder and no --rules); they fit the A1Betting backend only: write your own in ./rules "
                 "or pass --rules FILE"]
    else:
        lines = [f"rules: {len(rules.rules)} from {', '.join(map(str, rules.files)) or 'no files'}"]
    return lines + [f"warning: {w}" for w in rules.warnings]


def load(args: argparse.Namespace) -> tuple[Config, RuleSet]:
    """Config and rules, every problem of both reported together."""
    problems: list[str] = []
    config = Config()
    rules = RuleSet()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        problems += exc.problems
    try:
        rules = load_rules(default_rules(args.rules))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return config, rules


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    try:
        if args.command == "check":
            config, rules = configured(args)
            open_redis(config.redis)  # what the Redis client refuses in the URL, without connecting
            print("\n".join(rules_summary(rules)))
            print(f"ok: {len(rules.rules)} rules; upstream {config.upstream.url}")
            return 0
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            from proxy.devtools.demo import run_demo

            config, rules = load(args)
            return _until_sigterm(run_demo(config, rules))
        if args.command == "bench":
            from proxy.devtools.bench import run_bench

            only = tuple(args.only.split(",")) if args.only else None
            return _until_sigterm(run_bench(quick=args.quick, json_path=args.json, latency=args.latency,
                                            png_path=args.png, batch_extra=args.batch_extra,
                                            **({"only": only} if only else {})))
    except ConfigError as exc:
        verdict = "refusing to start" if args.command in ("serve", "demo") else "invalid"
        print(f"sidecache: configuration error, {verdict}:\n{exc}", file=sys.stderr)
        return 2
    except ListenerError as exc:
        print(f"sidecache: refusing to start: {exc}", file=sys.stderr)
        return 2
    return 2


def _until_sigterm(job: Coroutine[Any, Any, int]) -> int:
    """Run a devtool (demo, bench) to its end, or until SIGTERM cancels it. Python's own SIGTERM ends a process
    without unwinding it, which would leave every process it started (backend, proxies, nginx, Redis) running;
    cancelled, each is stopped on the way out, as after Ctrl-C."""
    async def run() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await job

    try:
        return asyncio.run(run())
    except asyncio.CancelledError:
        print("sidecache: stopped by SIGTERM; everything it started is stopped too", file=sys.stderr)
        return 128 + signal.SIGTERM


def configured(args: argparse.Namespace) -> tuple[Config, RuleSet]:
    """What `serve` runs with: the files, then the environment, then the flags, checked as a whole."""
    config, rules = load(args)
    config = apply_overrides(
        config, upstream=args.upstream, redis=args.redis, redis_mode=args.redis_mode, listen=args.listen,
        admin=args.admin, workers=args.workers, metrics=args.metrics, access_log=args.access_log,
    )
    if problems := check_admin_exposure(config, os.environ.get("SIDECACHE_ADMIN_TOKEN")) + check_workers(config):
        raise ConfigError(problems)
    return config, rules


def _serve(args: argparse.Namespace) -> int:
    config, rules = configured(args)
    token = os.environ.get("SIDECACHE_ADMIN_TOKEN")
    if config.server.workers > 1 and args.worker_index is None:
        return _supervise(config.server.workers)
    _install_uvloop()
    sources = Sources(  # what POST /rules/reload and SIGHUP read again
        config=args.config, rules=default_rules(args.rules),
        overrides=Overrides(upstream=args.upstream, redis=args.redis, redis_mode=args.redis_mode, listen=args.listen,
                            admin=args.admin, workers=args.workers, metrics=args.metrics,
                            access_log=args.access_log),
        env={k: v for k, v in os.environ.items() if k.startswith("SIDECACHE_")},
    )
    return asyncio.run(_run_one(config, rules, token, args.worker_index or 0, config.server.workers > 1, sources,
                                args.state_dir))


def _tune_gc() -> None:
    """Fewer collections: a request allocates hundreds of objects, and a full cache holds many long-lived ones
    that every older-generation collection walks. At CPython's default (a young collection every 700 allocations)
    the collector took a fifth to a third of a miss's CPU, more as the cache grew (240-300 us per miss, against
    190 us flat at 10,000). What start-up built (modules, rules, config) is frozen out of every collection."""
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, 10, 10)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform: asyncio's own loop works, just slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_one(config: Config, rules: RuleSet, token: str | None, index: int, shared_port: bool,
                   sources: Sources, state_dir: Path | None) -> int:
    from proxy.app import Sidecar

    log = logging.getLogger("sidecache")
    sidecar = Sidecar(config, rules, admin_token=token, reuse_port=shared_port, serve_admin=index == 0,
                      sources=sources, worker_index=index, state_dir=state_dir)
    await sidecar.start()
    _tune_gc()
    if index == 0:
        for line in rules_summary(rules):
            (log.warning if line.startswith("warning: ") else log.info)(line.removeprefix("warning: "))
    log.info("worker %d: proxy on %s -> %s; admin on %s; %d rules", index, sidecar.proxy_url,
             config.upstream.url, sidecar.admin_url or "(worker 0)", len(rules.rules))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, sidecar.reload_logged)
    await stop.wait()
    await sidecar.stop()
    return 0


def _redis_to_env(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Hand `--redis URL` to the workers in their environment: a password in argv shows in every `ps`."""
    env, out, i = dict(os.environ), [], 0
    while i < len(argv):
        if argv[i] == "--redis" and i + 1 < len(argv):
            env["SIDECACHE_REDIS_URL"] = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--redis="):
            env["SIDECACHE_REDIS_URL"] = argv[i].partition("=")[2]
        else:
            out.append(argv[i])
        i += 1
    return out, env


def _supervise(workers: int) -> int:
    """Start N workers on one port (SO_REUSEPORT); stop them all when one dies or a signal arrives."""
    argv, env = _redis_to_env(sys.argv[1:])
    state = tempfile.mkdtemp(prefix="sidecache-workers-")  # metric snapshots and reload requests (workers.py)
    children = [
        subprocess.Popen([sys.executable, "-m", "proxy", *argv, "--worker-index", str(i), "--state-dir", state],
                         env=env)
        for i in range(workers)
    ]

    def stop(*_: object) -> None:
        for c in children:
            if c.poll() is None:
                c.terminate()

    def reload(*_: object) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        stop()
        code = max(c.wait() for c in children)
        shutil.rmtree(state, ignore_errors=True)
    return code
