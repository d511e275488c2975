"""Real processes the tests start and stop by PID: `sidecache` commands, `sidecache serve` where a separate process
matters (memory, workers, signals), and redis-servers alone, as a Cluster or as a Sentinel set."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port a cluster node can use: its bus port (10000 higher) must exist and be free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m proxy <args>` to completion (30 s at most), its output as text."""
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def answers(url: str) -> bool:
    """A GET of `url` was answered with a success (anything else, or no answer within a second: False)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    proxy_url: str
    admin_url: str

    @property
    def pid(self) -> int:
        return self.proc.pid


def rss_peak_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 15.0) -> Iterator[ServeProcess]:
    """Start `python -m proxy serve` on free loopback ports; stop it (by its PID) on exit."""
    listen, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{listen}", "--admin",
           f"127.0.0.1:{admin}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    sp = ServeProcess(proc, f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"sidecache serve exited with {proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(sp.admin_url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield sp
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A redis-server of our own on loopback (TCP and a unix socket), no persistence, stopped by its PID.

    Tests that kill, pause or restart Redis start one of these for themselves, so the shared one stays up.
    """

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.socket = directory / "redis.sock"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--unixsocket", str(self.socket), "--unixsocketperm", "700", *self.extra]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: see {self.dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)

    def start_sentinel(self, conf: Path, timeout: float = 10.0) -> None:
        """`redis-server <conf> --sentinel` (a sentinel rewrites its config file, so it gets one of its own)."""
        assert REDIS_SERVER is not None
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], cwd=self.dir, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis sentinel exited with {self.proc.returncode}: see {self.dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis sentinel on port {self.port} did not answer PING")
            time.sleep(0.02)

    def answers(self) -> bool:
        """PING answered (an auth error counts: the server is up)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL if it lingers); only the process this object started."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL by PID: a crash, no goodbye to the clients."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


REDIS_CLI = shutil.which("redis-cli")


def redis_command(port: int, *args: str, timeout: float = 5.0) -> str:
    """One command through redis-cli to our own server on loopback; its reply as text."""
    assert REDIS_CLI is not None
    done = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                          timeout=timeout, check=True)
    return done.stdout.decode()


class RedisClusterServers:
    """A real Redis Cluster of our own: `primaries` redis-servers with one replica each, joined by
    `redis-cli --cluster create`; every process stopped by its PID.

    The node timeout is short (a killed primary's replica takes over in about two seconds), so failover tests do
    not wait the default 15 s.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.dir = directory
        self.servers: list[RedisServer] = []
        for i in range(primaries * (1 + replicas)):
            d = directory / f"node{i}"
            d.mkdir()
            self.servers.append(RedisServer(d, "--cluster-enabled", "yes", "--cluster-config-file",
                                            str(d / "nodes.conf"), "--cluster-node-timeout",
                                            str(self.NODE_TIMEOUT_MS), port=free_cluster_port()))
        self.replicas = replicas

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for s in self.servers:
            s.start()
        assert REDIS_CLI is not None
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       capture_output=True, timeout=60, check=True)
        wait_for(self.healthy, "the cluster to be ok on every node with every replica in sync")

    def healthy(self) -> bool:
        """cluster_state:ok on every running node, and every primary has its replicas linked."""
        try:
            for s in self.servers:
                if s.proc is None:
                    continue
                if "cluster_state:ok" not in redis_command(s.port, "CLUSTER", "INFO"):
                    return False
                # every node names each primary's replicas in CLUSTER SLOTS (what clients read the topology from)
                if redis_command(s.port, "CLUSTER", "SLOTS").count("\n127.0.0.1\n") < len(self.servers):
                    return False
            for p in self.primaries():
                info = redis_command(p.port, "INFO", "replication")
                if f"connected_slaves:{self.replicas}" not in info or "state=online" not in info:
                    return False
        except (subprocess.SubprocessError, OSError):
            return False
        return True

    def role(self, server: RedisServer) -> str:
        return redis_command(server.port, "ROLE").split("\n", 1)[0].strip()

    def primaries(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc is not None and self.role(s) == "master"]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A replica that follows this primary now."""
        for s in self.servers:
            if s.proc is not None and s is not primary and self.role(s) == "slave":
                if f"master_port:{primary.port}" in redis_command(s.port, "INFO", "replication"):
                    return s
        raise LookupError(f"no replica follows 127.0.0.1:{primary.port}")

    def owner_of(self, key: str) -> RedisServer:
        """The primary that serves key's slot now."""
        slot = int(redis_command(self.servers[0].port, "CLUSTER", "KEYSLOT", key))
        for p in self.primaries():
            for line in redis_command(p.port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for r in fields[8:]:
                        lo, _, hi = r.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return p
        raise LookupError(f"no primary serves slot {slot}")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


class RedisSentinelSet:
    """A real Sentinel deployment of our own: a primary, two replicas, and three `redis-server --sentinel`
    watching it as `service`; fast timeouts, so a failover takes about a second; stopped by PID.

    Two replicas, so that after one failover (a killed primary stays down) a second one still has a replica to
    promote: the sentinels take up to 10 s to turn a returning primary into a replica."""

    def __init__(self, directory: Path, service: str = "sidecache-test") -> None:
        self.dir = directory
        self.service = service
        for name in ("primary", "replica", "replica2"):
            (directory / name).mkdir()
        self.primary = RedisServer(directory / "primary")
        self.replicas = [RedisServer(directory / "replica"), RedisServer(directory / "replica2")]
        self.sentinels: list[RedisServer] = []
        for i in range(3):
            d = directory / f"sentinel{i}"
            d.mkdir()
            self.sentinels.append(RedisServer(d))

    @property
    def data(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.primary.start()
        for r in self.replicas:
            r.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
            r.start()
        for r in self.replicas:
            wait_for(lambda r=r: "master_link_status:up" in redis_command(r.port, "INFO", "replication"),  # type: ignore[misc]
                     "the replicas to sync")
        for s in self.sentinels:
            conf = s.dir / "sentinel.conf"
            conf.write_text(
                f"port {s.port}\nbind 127.0.0.1\ndir {s.dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 500\n"
                f"sentinel failover-timeout {self.service} 2000\n"
                f"sentinel parallel-syncs {self.service} 1\n")
            s.start_sentinel(conf)
        wait_for(self.settled, "the sentinels to know each other and the replica")

    def settled(self) -> bool:
        try:
            for s in self.sentinels:
                info = redis_command(s.port, "SENTINEL", "MASTER", self.service)
                fields = dict(zip(info.split("\n")[0::2], info.split("\n")[1::2], strict=False))
                if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != str(len(self.replicas)):
                    return False
                if fields.get("flags") != "master":
                    return False
        except (subprocess.SubprocessError, OSError):
            return False
        return True

    def current_primary_port(self) -> int:
        reply = redis_command(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(reply.split()[1])

    def stop(self) -> None:
        for s in [*self.sentinels, *self.data]:
            s.stop()
