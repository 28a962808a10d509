"""A cluster of hosts inside one network namespace: the cluster tests' bed.

``Cluster`` builds, in the current network namespace (which must be a fresh
one: ``unshare -n``, see ``isolated()``), two networks of veths on bridges:

- the cluster network 10.77.0.0/24 (bridge ``vc<id>a``): this process at
  10.77.0.1 (redis-server on :6379, nginx on :8080, the tests' webhook
  receivers), one network namespace per node at 10.77.0.11, .12, ...
  (``videochat`` on :8000, fake models: tests/cluster/node.py) and coturn's
  first leg at 10.77.0.3;
- the client network 10.78.0.0/24 (bridge ``vc<id>b``, no address of this
  process): coturn's second leg at 10.78.0.3 and a "client" namespace at
  10.78.0.10. IP forwarding is off everywhere, so a client there reaches
  nothing but coturn: its WebRTC media to a node can only be relayed by TURN.

Every process (redis-server, nginx, coturn, the nodes) is a real process
whose output goes to a log file in the cluster's temp dir; ``logs()`` gives
their tails (printed when a test or the bench fails). ``close()`` kills them,
deletes the namespaces and the temp dir, whatever happened; namespaces left
by a run that was killed are swept at the next start (their names carry the
pid that made them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes import Webhook

REPO = Path(__file__).resolve().parents[2]
API_KEY = "k-cluster-test"
KEY = {"Authorization": f"Bearer {API_KEY}"}

HOST_IP = "10.77.0.1"  # this process, on the cluster network
TURN_IP = "10.77.0.3"  # coturn's leg on the cluster network (relay addresses)
TURN_CLIENT_IP = "10.78.0.3"  # ... and on the client network
CLIENT_IP = "10.78.0.10"
REDIS_PORT = 6379
NGINX_PORT = 8080
NODE_PORT = 8000
TURN_PORT = 3478
TURN_USER, TURN_PASSWORD, TURN_REALM = "videochat", "turn-secret", "videochat.test"
NETNS_PREFIX = "vcl-"  # vcl-<pid>-<id>-<role>
TOOLS = {
    "ip": "ip",
    "redis-server": "redis-server",
    "nginx": "nginx",
    "turnserver": "turnserver",
}


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )


def isolated() -> str | None:
    """None when the cluster bed may be built here, else why not.

    It may only be built as root in a network namespace of its own that has
    nothing but ``lo`` (``unshare -n``): it never touches the machine's real
    interfaces or addresses."""
    missing = [name for name in TOOLS if _which(name) is None]
    if missing:
        return (
            f"missing {', '.join(missing)} (apt-get install -y redis-server nginx-light "
            "coturn iproute2; `make cluster-test` does)"
        )
    if os.geteuid() != 0:
        return "needs root (ip netns); run `make cluster-test` as root"
    try:
        if os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino:
            return (
                "not in a network namespace of its own: run inside `unshare -n` "
                "(`make cluster-test`), never on the machine's real network"
            )
    except OSError:
        pass  # /proc/1 hidden (a container): the interfaces below decide
    others = [n for _, n in socket.if_nameindex() if n != "lo" and not n.startswith("vc")]
    if others:
        return (
            f"this network namespace has interfaces besides lo ({', '.join(others)}): "
            "run inside a fresh `unshare -n`"
        )
    return None


def sh(*argv: str, check: bool = True, netns: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces an earlier run left (its pid is gone)."""
    removed = []
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.match(rf"{NETNS_PREFIX}(\d+)-", name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_netns_processes(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def _kill_netns_processes(name: str) -> None:
    for pid in sh("ip", "netns", "pids", name, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    netns: str | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        cmd = (["ip", "netns", "exec", self.netns] if self.netns else []) + self.argv
        with self.log.open("ab") as out:
            out.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            out.flush()
            # ip netns exec and nice exec the command: the pid is the program's.
            self.popen = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int, wait_s: float = 10.0) -> int | None:
        """Send ``sig`` to the program's process group (nginx's workers are in
        it: SIGKILL to the master alone would leave them listening), wait for
        it to exit (SIGKILL after ``wait_s``); its exit status."""
        if self.popen is None:
            return None
        pgid = self.popen.pid  # start_new_session: its own process group
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.popen.wait(wait_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.popen.wait(5)
        # Whatever of its group outlived it (a worker) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        code = self.popen.returncode
        self.popen = None
        return code

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass
class Node:
    index: int
    netns: str
    ip: str
    config_path: Path
    process: Process

    @property
    def id(self) -> str:
        return f"node{self.index}"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{NODE_PORT}"


@dataclass
class Cluster:
    """See the module's docstring. Use as a context manager."""

    nodes_count: int = 2
    max_sessions: int = 2
    heartbeat_s: float = 1.0
    node_ttl_s: float = 5.0
    reconnect_window_s: float = 300.0
    with_turn: bool = True
    with_client_ns: bool = True
    extra_server: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: secrets.token_hex(2))
    dir: Path = field(init=False)
    nodes: list[Node] = field(default_factory=list, init=False)
    processes: list[Process] = field(default_factory=list, init=False)
    namespaces: list[str] = field(default_factory=list, init=False)
    links: list[str] = field(default_factory=list, init=False)
    redis: Process | None = field(default=None, init=False)
    nginx: Process | None = field(default=None, init=False)
    turn: Process | None = field(default=None, init=False)
    client_ns: str | None = field(default=None, init=False)
    turn_ns: str | None = field(default=None, init=False)
    receivers: list[Webhook] = field(default_factory=list, init=False)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.print_logs()
            self.close()
            raise
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is not None:
            self.print_logs()
        self.close()

    def start(self) -> None:
        why = isolated()
        if why:
            raise RuntimeError(f"cluster bed refused: {why}")
        sweep_stale_namespaces()
        self.dir = Path(tempfile.mkdtemp(prefix=f"videochat-cluster-{self.id}-"))
        self.dir.chmod(0o755)  # nginx's workers (nobody) use its temp dirs
        sh("ip", "link", "set", "lo", "up")
        self._bridge(f"vc{self.id}a", f"{HOST_IP}/24")
        self._bridge(f"vc{self.id}b", None)
        if self.with_turn:
            self.turn_ns = self._netns("turn")
            self._attach(self.turn_ns, f"vc{self.id}ta", f"vc{self.id}a", f"{TURN_IP}/24", "eth0")
            self._attach(
                self.turn_ns, f"vc{self.id}tb", f"vc{self.id}b", f"{TURN_CLIENT_IP}/24", "eth1"
            )
        if self.with_client_ns:
            self.client_ns = self._netns("client")
            self._attach(self.client_ns, f"vc{self.id}c", f"vc{self.id}b", f"{CLIENT_IP}/24")
        self.start_redis()
        if self.with_turn:
            self._start_turn()
        for index in range(1, self.nodes_count + 1):
            self.add_node(index)
        self._start_nginx()
        for node in self.nodes:
            self.wait_node_ready(node)
        self.wait_cluster_sees(len(self.nodes))

    def webhook(self) -> Webhook:
        """A webhook receiver on this process's cluster address (closed with the bed)."""
        receiver = Webhook(HOST_IP)
        self.receivers.append(receiver)
        return receiver

    def close(self) -> None:
        for receiver in self.receivers:
            with contextlib.suppress(Exception):
                receiver.close()
        self.receivers.clear()
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.signal(signal.SIGKILL, wait_s=5)
        for name in self.namespaces:
            _kill_netns_processes(name)
            sh("ip", "netns", "del", name, check=False)
        for link in reversed(self.links):
            sh("ip", "link", "del", link, check=False)
        self.namespaces.clear()
        self.links.clear()
        if getattr(self, "dir", None) is not None and self.dir.exists():
            if os.environ.get("VIDEOCHAT_CLUSTER_KEEP_LOGS"):
                print(f"cluster logs kept in {self.dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ network
    def _netns(self, role: str) -> str:
        name = f"{NETNS_PREFIX}{os.getpid()}-{self.id}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            sh("sysctl", "-qw", f"{key}=1", netns=name, check=False)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", netns=name, check=False)
        return name

    def _bridge(self, name: str, address: str | None) -> None:
        sh("ip", "link", "add", name, "type", "bridge")
        self.links.append(name)
        if address:
            sh("ip", "addr", "add", address, "dev", name)
        sh("ip", "link", "set", name, "up")

    def _attach(
        self, netns: str, outer: str, bridge: str, address: str, inner: str = "eth0"
    ) -> None:
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", f"{outer}x")
        self.links.append(outer)
        sh("ip", "link", "set", f"{outer}x", "netns", netns)
        sh("ip", "link", "set", f"{outer}x", "name", inner, netns=netns)
        sh("ip", "addr", "add", address, "dev", inner, netns=netns)
        sh("ip", "link", "set", inner, "up", netns=netns)
        sh("ip", "link", "set", outer, "master", bridge)
        sh("ip", "link", "set", outer, "up")

    # ------------------------------------------------------------ processes
    def _process(self, name: str, argv: list[str], netns: str | None = None) -> Process:
        process = Process(name, argv, self.dir / f"{name}.log", netns)
        self.processes.append(process)
        return process

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST_IP}:{REDIS_PORT}/0"

    def start_redis(self) -> None:
        if self.redis is None:
            data = self.dir / "redis"
            data.mkdir(exist_ok=True)
            self.redis = self._process(
                "redis",
                [
                    _which("redis-server") or "redis-server",
                    "--bind",
                    f"{HOST_IP} 127.0.0.1",
                    "--port",
                    str(REDIS_PORT),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(data),
                    "--protected-mode",
                    "no",
                ],
            )
        self.redis.start()
        wait_port(HOST_IP, REDIS_PORT, 10, self.redis)

    def stop_redis(self) -> None:
        """Redis goes away (SIGKILL: no goodbye to the nodes' connections)."""
        assert self.redis is not None
        self.redis.signal(signal.SIGKILL)

    def redis_client(self) -> Any:
        import redis

        return redis.Redis(host=HOST_IP, port=REDIS_PORT, socket_timeout=5)

    def _start_turn(self) -> None:
        conf = self.dir / "turnserver.conf"
        conf.write_text(turnserver_conf(self.dir))
        self.turn = self._process(
            "coturn", [_which("turnserver") or "turnserver", "-c", str(conf)], self.turn_ns
        )
        self.turn.start()
        turn = self.turn

        def listening() -> bool:
            if not turn.running:
                raise RuntimeError(f"coturn exited:\n{turn.tail()}")
            bound = sh("ss", "-Hlun", netns=self.turn_ns, check=False)
            return all(f"{ip}:{TURN_PORT}" in bound for ip in (TURN_IP, TURN_CLIENT_IP))

        wait_until(listening, 15, "coturn did not open its listeners")

    def turn_url(self, ip: str = TURN_IP) -> str:
        return f"turn:{ip}:{TURN_PORT}?transport=udp"

    def ice_servers(self) -> list[dict[str, str]]:
        return [{"urls": self.turn_url(), "username": TURN_USER, "credential": TURN_PASSWORD}]

    def node_config(self, node: Node) -> dict[str, Any]:
        server: dict[str, Any] = {
            "host": node.ip,
            "port": NODE_PORT,
            "loopback_only": False,
            "max_sessions": self.max_sessions,
            "api_key": API_KEY,
            "ice_servers": self.ice_servers() if self.with_turn else [],
            "http_requests_per_s": 10_000,
            "http_burst": 10_000,
            "drain_s": 0.5,
        }
        server.update(self.extra_server)
        return {
            "weights_dir": str(self.dir / node.id / "weights"),
            "server": server,
            "cluster": {
                "redis_url": self.redis_url,
                "node_id": node.id,
                "node_url": node.url,
                "heartbeat_s": self.heartbeat_s,
                "node_ttl_s": self.node_ttl_s,
                "reconnect_window_s": self.reconnect_window_s,
            },
        }

    def add_node(self, index: int) -> Node:
        netns = self._netns(f"node{index}")
        ip = f"10.77.0.{10 + index}"
        self._attach(netns, f"vc{self.id}n{index}", f"vc{self.id}a", f"{ip}/24")
        (self.dir / f"node{index}" / "weights").mkdir(parents=True, exist_ok=True)
        config_path = self.dir / f"node{index}" / "config.yaml"
        process = self._process(
            f"node{index}",
            [sys.executable, "-m", "tests.cluster.node", "--config", str(config_path)],
            netns,
        )
        node = Node(index, netns, ip, config_path, process)
        config_path.write_text(yaml.safe_dump(self.node_config(node)))
        self.nodes.append(node)
        self.start_node(node, wait=False)
        return node

    def start_node(self, node: Node, wait: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOCHAT_")}
        env.update({"PYTHONUNBUFFERED": "1", "NO_PROXY": "*", "no_proxy": "*"})
        env.pop("HTTP_PROXY", None)
        env.pop("HTTPS_PROXY", None)
        node.process.start(env)
        if wait:
            self.wait_node_ready(node)

    def stop_node(self, node: Node) -> int | None:
        """SIGTERM: the node drains and leaves the registry."""
        return node.process.signal(signal.SIGTERM, wait_s=15)

    def kill_node(self, node: Node) -> None:
        """SIGKILL: the node vanishes without a word to anyone."""
        node.process.signal(signal.SIGKILL)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.process.running]

    def wait_node_ready(self, node: Node, timeout: float = 60) -> None:
        def ready() -> bool:
            if not node.process.running:
                raise RuntimeError(f"{node.id} exited:\n{node.process.tail()}")
            try:
                return httpx.get(f"{node.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, f"{node.id} did not answer /health")

    def wait_cluster_sees(self, alive: int, timeout: float = 30) -> None:
        def seen() -> bool:
            try:
                answer = httpx.get(f"{self.url}/api/cluster", headers=KEY, timeout=3)
            except httpx.HTTPError:
                return False
            if answer.status_code != 200:
                return False
            return sum(1 for n in answer.json().get("nodes", []) if n.get("alive")) >= alive

        wait_until(seen, timeout, f"the registry did not list {alive} live nodes")

    def _start_nginx(self) -> None:
        base = self.dir / "nginx"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (base / "tmp" / sub).mkdir(parents=True, exist_ok=True)
            (base / "tmp" / sub).chmod(0o777)
        base.chmod(0o755)
        (base / "tmp").chmod(0o755)
        conf = base / "nginx.conf"
        conf.write_text(nginx_conf(base, [n.url.removeprefix("http://") for n in self.nodes]))
        self.nginx = self._process(
            "nginx", [_which("nginx") or "nginx", "-p", str(base), "-c", str(conf)]
        )
        self.nginx.start()
        wait_port(HOST_IP, NGINX_PORT, 10, self.nginx)

    @property
    def url(self) -> str:
        """The cluster's one address: nginx."""
        return f"http://{HOST_IP}:{NGINX_PORT}"

    # ------------------------------------------------------------ reports
    def logs(self, lines: int = 60) -> str:
        parts = []
        for process in self.processes:
            parts.append(f"----- {process.name} ({process.log}) -----\n{process.tail(lines)}")
        return "\n".join(parts)

    def print_logs(self, lines: int = 60) -> None:
        if getattr(self, "dir", None) is not None:
            print(self.logs(lines), file=sys.stderr)

    # ------------------------------------------------------------ the client host
    def client_command(self, *argv: str) -> list[str]:
        """A command that runs in the client namespace (it reaches only coturn)."""
        assert self.client_ns is not None
        return ["ip", "netns", "exec", self.client_ns, *argv]


def turnserver_conf(directory: Path) -> str:
    """coturn: long-term credentials, a realm, UDP/TCP only (no TLS, no DTLS,
    no CLI), relays on the cluster network, peers only in the test ranges."""
    return textwrap.dedent(
        f"""\
        listening-port={TURN_PORT}
        listening-ip={TURN_IP}
        listening-ip={TURN_CLIENT_IP}
        relay-ip={TURN_IP}
        min-port=49152
        max-port=49999
        realm={TURN_REALM}
        lt-cred-mech
        user={TURN_USER}:{TURN_PASSWORD}
        userdb={directory}/turndb
        fingerprint
        no-tls
        no-dtls
        no-cli
        no-multicast-peers
        denied-peer-ip=0.0.0.0-255.255.255.255
        allowed-peer-ip=10.77.0.0-10.77.0.255
        allowed-peer-ip=10.78.0.0-10.78.0.255
        pidfile={directory}/turnserver.pid
        log-file=stdout
        simple-log
        no-software-attribute
        """
    )


def nginx_conf(base: Path, upstreams: list[str]) -> str:
    """nginx in front of the nodes: least_conn over their HTTP, plain HTTP
    (no websockets are used), the client's address passed on."""
    servers = "\n".join(
        f"        server {address} max_fails=1 fail_timeout=2s;" for address in upstreams
    )
    return textwrap.dedent(
        f"""\
        worker_processes 1;
        daemon off;
        pid {base}/nginx.pid;
        error_log {base}/error.log info;
        events {{ worker_connections 512; }}
        http {{
            access_log {base}/access.log;
            client_body_temp_path {base}/tmp/client_body;
            proxy_temp_path {base}/tmp/proxy;
            fastcgi_temp_path {base}/tmp/fastcgi;
            uwsgi_temp_path {base}/tmp/uwsgi;
            scgi_temp_path {base}/tmp/scgi;
            upstream videochat {{
                least_conn;
        {servers}
            }}
            server {{
                listen {HOST_IP}:{NGINX_PORT};
                client_max_body_size 8m;
                location / {{
                    proxy_pass http://videochat;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Proto $scheme;
                    proxy_connect_timeout 1s;
                    proxy_read_timeout 60s;
                    proxy_next_upstream error timeout;
                }}
            }}
        }}
        """
    )


def wait_port(host: str, port: int, timeout: float, process: Process | None = None) -> None:
    def open_() -> bool:
        if process is not None and not process.running:
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(open_, timeout, f"nothing listens on {host}:{port}")


def wait_until(check: Any, timeout: float, what: str = "timed out", every: float = 0.05) -> float:
    """Poll ``check`` until true; the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} (after {timeout} s)")
        time.sleep(every)
    return time.monotonic() - start


@contextlib.contextmanager
def cluster(**options: Any) -> Iterator[Cluster]:
    with Cluster(**options) as built:
        yield built


class RelayedClient:
    """tests/cluster/rtc_client.py in the client namespace; this process does
    its signalling (``POST /offer`` to ``url``), its media goes over TURN."""

    def __init__(self, bed: Cluster, text: str = "What is the capital of France?") -> None:
        import queue

        self.bed = bed
        self.lines: queue.Queue[str] = queue.Queue()
        self.log = bed.dir / f"client-{secrets.token_hex(2)}.log"
        self._log = self.log.open("ab")
        argv = [
            sys.executable,
            "-m",
            "tests.cluster.rtc_client",
            "--turn-url",
            bed.turn_url(TURN_CLIENT_IP),
            "--user",
            TURN_USER,
            "--password",
            TURN_PASSWORD,
            "--text",
            text,
        ]
        for node in bed.nodes:
            argv += ["--unreachable", f"{node.ip}:{NODE_PORT}"]
        argv += ["--unreachable", f"{HOST_IP}:{NGINX_PORT}"]
        self.popen = subprocess.Popen(
            bed.client_command(*argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            text=True,
            start_new_session=True,
        )
        self.answer: dict[str, Any] | None = None
        self.offer_response: httpx.Response | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _next(self, timeout: float) -> dict[str, Any]:
        import queue

        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the client said nothing in {timeout} s: {self.stderr()}") from None
        if not line:
            raise RuntimeError(f"the client exited: {self.stderr()}")
        return json.loads(line)

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def connect(self, url: str, token: str | None = None, timeout: float = 60) -> dict[str, Any]:
        """Signal through ``url`` (a node or nginx), wait for the text turn's
        reply; the client's result (see rtc_client.py)."""
        offer = self._next(timeout)
        body = dict(offer["offer"])
        body["lang"] = "en"
        if token:
            body["token"] = token
        response = httpx.post(f"{url}/offer", json=body, timeout=30)
        self.offer_response = response
        if response.status_code != 200:
            self.close()
            raise AssertionError(f"POST {url}/offer: {response.status_code} {response.text}")
        self.answer = response.json()
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(self.answer) + "\n")
        self.popen.stdin.flush()
        return self._next(timeout)["result"]

    def turn(self, text: str, timeout: float = 60) -> dict[str, Any]:
        """Another text turn on the open peer; the client's result."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps({"text": text}) + "\n")
        self.popen.stdin.flush()
        return self._next(timeout)["result"]

    def close(self) -> None:
        if self.popen.poll() is None:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.write("close\n")
                self.popen.stdin.flush()
                self.popen.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
