"""An aiortc client for the cluster tests, run in the client namespace:

    ip netns exec <client-ns> python -m tests.cluster.rtc_client --turn-url ... --text ...

That namespace reaches nothing but coturn, so signalling goes through the
test process (like a browser's HTTP, which takes another path than its
media): this client writes its offer as one JSON line on stdout
(``{"offer": {"sdp", "type"}}``), reads the node's answer (the JSON of
``POST /offer``) as one line on stdin, connects, sends a text turn on the
"events" data channel, and writes ``{"result": {...}}``: the events
received, the reply's text, and the ICE pair it connected over (its local
candidate must be a TURN relay). It then keeps the peer open until stdin
says ``close`` (or ends; a line ``{"text": ...}`` makes another turn and
writes its result), so the test can look at the live session.

It first checks that the addresses given with ``--unreachable`` really are
unreachable from here (a TCP connect fails), which is what makes a
connection a proof of relaying.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from bench.client import MicrophoneTrack


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def unreachable(address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return {"address": address, "unreachable": False, "error": None}
    except OSError as exc:
        return {"address": address, "unreachable": True, "error": str(exc)}


def nominated_pair(pc: RTCPeerConnection) -> dict[str, Any] | None:
    """The ICE pair the peer uses (aioice's private state, checked on 0.10)."""
    try:
        connection = pc.sctp.transport.transport._connection
        pair = connection._nominated.get(1)
    except AttributeError:
        return None
    if pair is None:
        return None
    local, remote = pair.local_candidate, pair.remote_candidate
    return {
        "local": {"type": local.type, "host": local.host, "port": local.port},
        "remote": {"type": remote.type, "host": remote.host, "port": remote.port},
    }


async def run(args: argparse.Namespace) -> int:
    checks = [unreachable(a) for a in args.unreachable]
    config = RTCConfiguration(
        iceServers=[RTCIceServer(urls=args.turn_url, username=args.user, credential=args.password)]
    )
    pc = RTCPeerConnection(config)
    mic = MicrophoneTrack()  # silence: the turn is typed
    pc.addTransceiver(mic, direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("events")
    events: list[dict[str, Any]] = []
    opened = asyncio.Event()
    changed = asyncio.Event()

    @channel.on("open")
    def on_open() -> None:
        opened.set()

    @channel.on("message")
    def on_message(message: str) -> None:
        events.append(json.loads(message))
        changed.set()

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def drain() -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return

        asyncio.ensure_future(drain())

    async def turn(text: str) -> dict[str, Any]:
        """Send a text turn; wait for its reply and its end (``turn``)."""
        since = len(events)
        channel.send(json.dumps({"type": "text", "text": text}))
        asked = time.monotonic()
        deadline = asked + args.timeout
        while True:
            new = events[since:]
            reply = [e["text"] for e in new if e.get("type") == "bot_text"]
            if reply and any(e.get("type") == "turn" for e in new):
                break
            if channel.readyState != "open":
                raise ConnectionError(f"the data channel is {channel.readyState}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to {text!r}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        return {
            "reply": " ".join(reply),
            "reply_s": round(time.monotonic() - asked, 3),
            "events": new,
        }

    started = time.monotonic()
    await pc.setLocalDescription(await pc.createOffer())
    emit({"offer": {"sdp": pc.localDescription.sdp, "type": "offer"}, "checks": checks})
    line = await asyncio.wait_for(read_line(), args.timeout)
    if not line.strip():
        emit({"error": "no answer on stdin"})
        return 2
    answer = json.loads(line)
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    result: dict[str, Any] = {"session_id": answer.get("session_id"), "checks": checks}
    try:
        await asyncio.wait_for(opened.wait(), args.timeout)
        result["connected_s"] = round(time.monotonic() - started, 3)
        result["pair"] = nominated_pair(pc)
        result.update(await turn(args.text))
    except Exception as exc:  # reported to the test, which shows the node logs
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["ice_state"] = pc.iceConnectionState
        result["events"] = events
        emit({"result": result})
        await pc.close()
        return 1
    emit({"result": result})
    # Hold the peer (and so the session) until the test is done with it; a
    # line {"text": ...} makes another turn.
    while True:
        line = await read_line()
        if not line or line.strip() == "close":
            break
        try:
            emit({"result": await turn(json.loads(line)["text"])})
        except Exception as exc:
            emit({"result": {"error": f"{type(exc).__name__}: {exc}", "events": events}})
    await pc.close()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turn-url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--text", default="What is the capital of France?")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--unreachable", action="append", default=[], help="host:port that must not connect"
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
