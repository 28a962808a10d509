"""The cluster's own costs, on 2 and 3 nodes with the fake models (no
inference: this times the plumbing), on the bed of tests/cluster/harness.py:

- placement: ``POST /api/sessions`` through nginx (median, p90), each session
  deleted after;
- admission: sessions admitted until 503 against the cluster's capacity, one
  by one and in one concurrent burst;
- a dead node: SIGKILL to the session shown ``ended`` (``node_lost``) through
  nginx, then the node restarted; median over several kills;
- Redis load: commands (``INFO commandstats``) per node per heartbeat with no
  sessions, and per session lifecycle (mint, WebRTC connect over TURN, one
  text turn, hang up) on top, to extrapolate to many nodes.

As root inside a fresh network namespace, like the tests::

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.cluster \\
        --out bench/results/cluster.md'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.harness import KEY, Cluster, RelayedClient, isolated, wait_until


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def machine() -> dict[str, Any]:
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags.split(),
        "avx2": "avx2" in flags.split(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def commandstats(bed: Cluster) -> dict[str, int]:
    stats = bed.redis_client().info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def placement(bed: Cluster, rounds: int) -> dict[str, Any]:
    times = []
    nodes: dict[str, int] = {}
    with httpx.Client(timeout=15, headers=KEY) as http:
        for _ in range(rounds):
            start = time.perf_counter()
            response = http.post(f"{bed.url}/api/sessions", json={"lang": "en"})
            times.append(time.perf_counter() - start)
            assert response.status_code == 201, response.text
            body = response.json()
            nodes[body["node"]] = nodes.get(body["node"], 0) + 1
            gone = http.delete(f"{bed.url}/api/sessions/{body['session_id']}")
            assert gone.status_code == 200, gone.text
    return {
        "rounds": rounds,
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": percentile(times, 0.9) * 1000,
        "max_ms": max(times) * 1000,
        "nodes": nodes,
    }


def admission(bed: Cluster) -> dict[str, Any]:
    capacity = bed.max_sessions * len(bed.nodes)
    with httpx.Client(timeout=15, headers=KEY) as http:
        ids, refusal = [], None
        while len(ids) <= capacity * 2:
            response = http.post(f"{bed.url}/api/sessions", json={"lang": "en"})
            if response.status_code != 201:
                refusal = (response.status_code, response.headers.get("retry-after"))
                break
            ids.append(response.json()["session_id"])
        for sid in ids:
            http.delete(f"{bed.url}/api/sessions/{sid}")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers=KEY) as http:
            urls = [n.url for n in bed.nodes] + [bed.url]
            return list(
                await asyncio.gather(
                    *(
                        http.post(f"{urls[i % len(urls)]}/api/sessions", json={"lang": "en"})
                        for i in range(capacity * 3)
                    )
                )
            )

    answers = asyncio.run(burst())
    admitted = [r.json()["session_id"] for r in answers if r.status_code == 201]
    with httpx.Client(timeout=15, headers=KEY) as http:
        for sid in admitted:
            http.delete(f"{bed.url}/api/sessions/{sid}")
    return {
        "capacity": capacity,
        "sequential_admitted": len(ids),
        "refusal": refusal,
        "burst_requests": len(answers),
        "burst_admitted": len(admitted),
        "burst_other": sorted({r.status_code for r in answers if r.status_code != 201}),
    }


def dead_node(bed: Cluster, kills: int) -> dict[str, Any]:
    took = []
    for k in range(kills):
        victim = bed.nodes[k % len(bed.nodes)]
        # On an empty cluster a node places a session it is asked for on itself.
        response = httpx.post(f"{victim.url}/api/sessions", json={}, headers=KEY, timeout=15)
        assert response.status_code == 201, response.text
        body = response.json()
        victim = bed.node(body["node"])
        sid = body["session_id"]
        bed.kill_node(victim)
        start = time.monotonic()

        def ended(sid: str = sid) -> bool:
            try:
                answer = httpx.get(f"{bed.url}/api/sessions/{sid}", headers=KEY, timeout=5)
            except httpx.HTTPError:
                return False
            return answer.status_code == 200 and answer.json().get("state") == "ended"

        wait_until(ended, bed.node_ttl_s * 4 + 10, f"{sid} not ended", every=0.05)
        took.append(time.monotonic() - start)
        reason = httpx.get(f"{bed.url}/api/sessions/{sid}", headers=KEY).json().get("reason")
        assert reason == "node_lost", reason
        bed.start_node(victim)
        bed.wait_cluster_sees(len(bed.nodes))
        httpx.delete(f"{bed.url}/api/sessions/{sid}", headers=KEY, timeout=15)
    return {
        "kills": kills,
        "median_s": statistics.median(took),
        "min_s": min(took),
        "max_s": max(took),
        "all_s": took,
    }


def redis_load(bed: Cluster, idle_s: float, lifecycles: int) -> dict[str, Any]:
    """Commands with no sessions (per node per heartbeat), then per session
    lifecycle on top of that idle rate."""
    time.sleep(bed.heartbeat_s * 2)
    before, start = commandstats(bed), time.monotonic()
    time.sleep(idle_s)
    idle = diff(commandstats(bed), before)
    idle_elapsed = time.monotonic() - start
    idle_total = sum(idle.values()) - idle.get("info", 0)
    per_node_per_beat = idle_total / (len(bed.nodes) * idle_elapsed / bed.heartbeat_s)

    before, start = commandstats(bed), time.monotonic()
    for _ in range(lifecycles):
        minted = httpx.post(
            f"{bed.url}/api/sessions", json={"lang": "en"}, headers=KEY, timeout=15
        ).json()
        client = RelayedClient(bed)
        try:
            result = client.connect(bed.url, minted["token"])
            assert "error" not in result, result
        finally:
            client.close()

        def gone(sid: str = minted["session_id"]) -> bool:
            answer = httpx.get(f"{bed.url}/api/sessions/{sid}", headers=KEY, timeout=5)
            return answer.json().get("state") == "ended"

        wait_until(gone, 15, "the session did not end after the hang-up")
    busy = diff(commandstats(bed), before)
    busy_elapsed = time.monotonic() - start
    busy.pop("info", None)
    idle_rate = idle_total / idle_elapsed

    # The cluster full of live sessions (connected, after their turn): what
    # they add per second.
    clients = []
    try:
        for _ in range(len(bed.nodes) * bed.max_sessions):
            minted = httpx.post(
                f"{bed.url}/api/sessions", json={"lang": "en"}, headers=KEY, timeout=15
            ).json()
            client = RelayedClient(bed)
            clients.append(client)
            result = client.connect(bed.url, minted["token"])
            assert "error" not in result, result
        time.sleep(bed.heartbeat_s * 2)
        held, held_start = commandstats(bed), time.monotonic()
        time.sleep(idle_s)
        live = diff(commandstats(bed), held)
        live_elapsed = time.monotonic() - held_start
    finally:
        for client in clients:
            client.close()
    live.pop("info", None)
    live_rate = sum(live.values()) / live_elapsed
    per_live_session_per_s = (live_rate - idle_rate) / len(clients)
    per_session = (sum(busy.values()) - idle_rate * busy_elapsed) / lifecycles
    by_command = {
        k: v / lifecycles - idle.get(k, 0) / idle_elapsed * busy_elapsed / lifecycles
        for k, v in busy.items()
    }
    return {
        "idle_s": idle_elapsed,
        "idle_commands": {k: v for k, v in idle.items() if k != "info"},
        "per_node_per_beat": per_node_per_beat,
        "per_node_per_s": per_node_per_beat / bed.heartbeat_s,
        "lifecycles": lifecycles,
        "lifecycle_s": busy_elapsed / lifecycles,
        "per_session": per_session,
        "live_sessions": len(clients),
        "live_commands": live,
        "per_live_session_per_s": per_live_session_per_s,
        "per_session_by_command": {
            k: round(v, 1) for k, v in sorted(by_command.items(), key=lambda kv: -kv[1])
        },
    }


def run(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    print(f"cluster of {nodes} nodes ...", file=sys.stderr)
    with Cluster(
        nodes_count=nodes,
        max_sessions=2,
        heartbeat_s=args.heartbeat_s,
        node_ttl_s=args.node_ttl_s,
    ) as bed:
        result: dict[str, Any] = {"nodes": nodes}
        result["placement"] = placement(bed, args.mints)
        print(f"  placement {result['placement']}", file=sys.stderr)
        result["admission"] = admission(bed)
        print(f"  admission {result['admission']}", file=sys.stderr)
        result["redis"] = redis_load(bed, args.idle_s, args.lifecycles)
        print(f"  redis {result['redis']['per_session']:.0f}/session", file=sys.stderr)
        result["dead_node"] = dead_node(bed, args.kills)
        print(f"  dead node {result['dead_node']}", file=sys.stderr)
        return result


def report(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    m = machine()
    lines = [
        "# Cluster: placement, dead nodes, Redis load",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} by `{command}` "
        "(bench/cluster.py; the bed of tests/cluster/harness.py).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, AVX-512: {'yes' if m['avx512'] else 'no'} "
        f"(AVX2: {'yes' if m['avx2'] else 'no'}); Python {m['python']}, Linux {m['kernel']}. "
        "All nodes, Redis, nginx and coturn share this one machine, each node in its own "
        "network namespace; the nodes run the fake models (tests/fakes.py), so these "
        "figures are the cluster's plumbing, not inference.",
        "",
        f"Settings: `server.max_sessions: 2` per node, `cluster.heartbeat_s: {args.heartbeat_s}`, "
        f"`cluster.node_ttl_s: {args.node_ttl_s}`; nginx `least_conn` in front.",
        "",
        "| nodes | capacity | placement median | placement p90 | admitted one by one "
        "| admitted in a burst | dead node noticed (median, min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, a, d = r["placement"], r["admission"], r["dead_node"]
        burst = f"{a['burst_admitted']} of {a['burst_requests']} (others: {a['burst_other']})"
        lines.append(
            f"| {r['nodes']} | {a['capacity']} | {p['median_ms']:.1f} ms | {p['p90_ms']:.1f} ms "
            f"| {a['sequential_admitted']}, then {a['refusal'][0] if a['refusal'] else '-'} "
            f"(Retry-After {a['refusal'][1] if a['refusal'] else '-'}) | {burst} "
            f"| {d['median_s']:.2f} s ({d['min_s']:.2f}-{d['max_s']:.2f}, {d['kills']} kills) |"
        )
    lines += [
        "",
        f"Placement: {args.mints} `POST /api/sessions` through nginx, each deleted after. "
        "A dead node: SIGKILL, then `GET /api/sessions/{id}` through nginx every 50 ms "
        "until it shows `ended` (reason `node_lost`); the node is restarted between kills. "
        "Its bound is `node_ttl_s` after the node's last heartbeat plus up to one "
        "heartbeat of the reaping node.",
        "",
        "## Redis load",
        "",
        "| nodes | commands per node per heartbeat (idle) | per node per second "
        "| per session lifecycle | lifecycle took | per live session per second |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        x = r["redis"]
        lines.append(
            f"| {r['nodes']} | {x['per_node_per_beat']:.1f} | {x['per_node_per_s']:.1f} "
            f"| {x['per_session']:.0f} | {x['lifecycle_s']:.1f} s "
            f"| {x['per_live_session_per_s']:.2f} |"
        )
    last = results[-1]["redis"]
    idle_cmds = ", ".join(f"{k} {v}" for k, v in sorted(last["idle_commands"].items()))
    by_cmd = ", ".join(
        f"{k} {v}" for k, v in list(last["per_session_by_command"].items())[:12] if v >= 0.5
    )
    live_cmds = ", ".join(f"{k} {v}" for k, v in sorted(last["live_commands"].items()))
    per_s = max(r["redis"]["per_node_per_s"] for r in results)
    per_live = max(r["redis"]["per_live_session_per_s"] for r in results)
    per_session = max(r["redis"]["per_session"] for r in results)
    lines += [
        "",
        f"Counted with `INFO commandstats` (INFO itself left out). Idle: "
        f"{last['idle_s']:.0f} s with no session ({results[-1]['nodes']} nodes: "
        f"{idle_cmds}). A session lifecycle: mint, WebRTC connect over TURN, one text "
        "turn, hang-up, the idle rate over the same time taken off "
        f"({results[-1]['nodes']} nodes, {last['lifecycles']} lifecycles; per command: "
        f"{by_cmd}). Live sessions: the cluster full ({last['live_sessions']} sessions) held "
        f"connected (after their turn) for {args.idle_s:.0f} s, the idle rate taken off "
        f"(all commands then: {live_cmds}).",
        "",
        "Extrapolated (linear, from the larger of the figures above): 100 nodes send "
        f"about {per_s * 100:.0f} commands/s idle; 100 nodes x 2 sessions each, "
        "every session lasting 5 minutes, add about "
        f"{per_session * 200 / 300:.1f} commands/s for their lifecycles and "
        f"{max(per_live, 0) * 200:.0f} commands/s while live, plus each further turn's "
        "writes. A redis-server is commonly quoted at around 100k simple commands/s "
        "(not measured here); the placement script walks every node (O(nodes) per "
        "placement), so at 100 nodes each placement does ~50x the work measured here "
        "at 2-3 nodes: not measured.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster.md"))
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--mints", type=int, default=50)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--lifecycles", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--node-ttl-s", type=float, default=5.0)
    parser.add_argument("--command", default=None, help="the command named in the report")
    args = parser.parse_args()
    why = isolated()
    if why:
        sys.exit(f"bench.cluster: {why}")
    command = args.command or "python -m bench.cluster " + " ".join(sys.argv[1:])
    results = [run(n, args) for n in args.nodes]
    text = report(results, args, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
