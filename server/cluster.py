"""Several nodes behind one API: a registry in Redis, placement, dead nodes.

Redis does the distribution; this module only decides placement and keeps
the records every node reads. Keys (``<p>`` = ``videochat:``):

- ``<p>nodes``: the set of node ids that have joined;
- ``<p>node:<id>``: a node's hash (url, capacity, avatars, voices), expiring
  ``cluster.node_ttl_s`` after its last heartbeat: gone = the node is dead;
- ``<p>slots:<id>``: a node's admitted sessions, a sorted set scored by when
  the reservation lapses (a minted session's token expiry; ``+inf`` live);
- ``<p>session:<sid>``: a session's record (options, token hash, node,
  state, reason, transcript, history), kept ``reconnect_window_s`` after it
  ends; ``<p>token:<sha256>`` -> session id; ``<p>sessions``: ids by creation;
- ``<p>origins``: embedding origins of sessions (CORS on every node), scored
  by when they lapse; ``<p>reaper``: a lock, so one node a beat looks for
  dead nodes.

Placement and the end of a session are Lua scripts, so admission stays exact
across nodes (no read-then-write race) and ``session.ended`` fires once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import HTTPException, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from core.config import Config

log = logging.getLogger(__name__)
PREFIX = "videochat:"
FORWARDED_HEADER = "x-videochat-forwarded"  # set on requests one node passes to another
FORWARD_TIMEOUT_S = 15.0
REDIS_TIMEOUT_S = 2.0
ENDED_KEEP_MIN_S = 60.0  # an ended record stays readable at least this long

# Least loaded live node with room (and the avatar and voice asked for);
# reserves the slot in the same step. ARGV: prefix, session id, slot score,
# now, avatar, voice, preferred node (wins ties), "1" when the preferred node
# wins whenever it has room. Returns the node id or false.
_PLACE = """
local prefix, sid, score, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local avatar, voice, preferred, stay = ARGV[5], ARGV[6], ARGV[7], ARGV[8] == '1'
local best, best_load = nil, nil
for _, node in ipairs(redis.call('SMEMBERS', prefix .. 'nodes')) do
  local info = redis.call('HMGET', prefix .. 'node:' .. node, 'capacity', 'avatars', 'voices')
  if info[1] then
    local fits = true
    if avatar ~= '' and not string.find(info[2] or '', '|' .. avatar .. '|', 1, true) then
      fits = false
    end
    if voice ~= '' and not string.find(info[3] or '', '|' .. voice .. '|', 1, true) then
      fits = false
    end
    local slots = prefix .. 'slots:' .. node
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', '(' .. now)
    local used, capacity = redis.call('ZCARD', slots), tonumber(info[1])
    if fits and used < capacity then
      local load = used / capacity
      if stay and node == preferred then load = -1 end
      if best == nil or load < best_load or (load == best_load and node == preferred) then
        best, best_load = node, load
      end
    end
  end
end
if best then
  redis.call('ZADD', prefix .. 'slots:' .. best, score, sid)
  return best
end
return false
"""

# Ends a session once: true the first time (the caller fires session.ended).
# ARGV: prefix, session id, reason, now, resumable (0/1), keep seconds.
_END = """
local prefix, sid = ARGV[1], ARGV[2]
local key = prefix .. 'session:' .. sid
local state = redis.call('HGET', key, 'state')
if not state or state == 'ended' then return 0 end
local node = redis.call('HGET', key, 'node')
if node then redis.call('ZREM', prefix .. 'slots:' .. node, sid) end
redis.call('HSET', key, 'state', 'ended', 'reason', ARGV[3], 'ended_at', ARGV[4],
           'resumable', ARGV[5])
redis.call('EXPIRE', key, ARGV[6])
local token = redis.call('HGET', key, 'token_hash')
if token then redis.call('EXPIRE', prefix .. 'token:' .. token, ARGV[6]) end
return 1
"""


class RegistryUnavailable(HTTPException):
    """Redis cannot be reached: this node keeps its live sessions, takes no new ones."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            503,
            "the cluster registry (Redis) is unreachable: this node keeps its live "
            "conversations but cannot take new ones; try again shortly"
            + (f" ({detail})" if detail else ""),
            headers={"Retry-After": "5"},
        )


def token_hash(token: str) -> str:
    """Tokens are kept hashed: a read of Redis does not hand out credentials."""
    return hashlib.sha256(token.encode()).hexdigest()


def _listed(names: list[str]) -> str:
    return "|" + "|".join(names) + "|"


@dataclass
class NodeInfo:
    id: str
    url: str
    capacity: int
    sessions: int = 0
    alive: bool = True

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "capacity": self.capacity,
            "sessions": self.sessions,
            "alive": self.alive,
        }


@dataclass
class SessionRecord:
    """A session as every node sees it."""

    id: str
    node: str
    state: str  # waiting | live | ended
    options: dict[str, Any]
    token_hash: str
    created: float
    expires_at: float = 0.0  # a waiting session's connect deadline
    reason: str = ""
    ended_at: float = 0.0
    resumable: bool = False
    transcript: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    avatar: str | None = None  # as the node running it resolved them
    voice: str | None = None

    @classmethod
    def from_hash(cls, sid: str, raw: dict[str, str]) -> SessionRecord:
        return cls(
            id=sid,
            node=raw.get("node", ""),
            state=raw.get("state", "ended"),
            options=json.loads(raw.get("options", "{}")),
            token_hash=raw.get("token_hash", ""),
            created=float(raw.get("created", 0)),
            expires_at=float(raw.get("expires_at", 0)),
            reason=raw.get("reason", ""),
            ended_at=float(raw.get("ended_at", 0)),
            resumable=raw.get("resumable") == "1",
            transcript=json.loads(raw.get("transcript", "[]")),
            history=json.loads(raw.get("history", "[]")),
            avatar=raw.get("avatar"),
            voice=raw.get("voice"),
        )

    def summary(self, detail: bool = False) -> dict[str, Any]:
        """What the REST API shows of a session no node is running."""
        info: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "node": self.node,
            "lang": self.options.get("lang", "auto"),
            "avatar": self.avatar or self.options.get("avatar"),
            "voice": self.voice or self.options.get("voice"),
            "mode": self.options.get("mode"),
            "created": self.created,
            "turns": len(self.transcript),
        }
        if self.state == "waiting":
            info["expires_at"] = self.expires_at
        if self.state == "ended":
            info.update(reason=self.reason, ended_at=self.ended_at, resumable=self.resumable)
        if detail:
            info["history"] = self.history
        return info


class ClusterRegistry:
    """This node's view of the cluster, kept in Redis."""

    def __init__(self, config: Config, redis: aioredis.Redis | None = None) -> None:
        cluster = config.cluster
        self.config = config
        self.node_id = cluster.node_id or f"{config.server.host}:{config.server.port}"
        self.node_url = (
            cluster.node_url or f"http://{config.server.host}:{config.server.port}"
        ).rstrip("/")
        self.redis = redis or aioredis.from_url(
            cluster.redis_url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        self.available = False  # Redis answered the last heartbeat
        self._place = self.redis.register_script(_PLACE)
        self._end = self.redis.register_script(_END)
        self._http = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S, trust_env=False)

    # ------------------------------------------------------------ keys
    def _node_key(self, node: str) -> str:
        return f"{PREFIX}node:{node}"

    def _slots(self, node: str) -> str:
        return f"{PREFIX}slots:{node}"

    def _session_key(self, sid: str) -> str:
        return f"{PREFIX}session:{sid}"

    def _token_key(self, digest: str) -> str:
        return f"{PREFIX}token:{digest}"

    @property
    def _ended_keep_s(self) -> int:
        return int(max(self.config.cluster.reconnect_window_s, ENDED_KEEP_MIN_S))

    async def _call(self, what: str, operation: Any) -> Any:
        """Run a Redis operation; unreachable -> RegistryUnavailable (a 503)."""
        try:
            return await operation
        except (RedisError, OSError) as exc:
            if self.available:
                log.warning("cluster registry unreachable (%s): %s", what, exc)
            self.available = False
            raise RegistryUnavailable() from None

    # ----------------------------------------------------------- nodes
    async def heartbeat(
        self, capacity: int, avatars: list[str], voices: list[str], live: list[str]
    ) -> bool:
        """Publish this node (its key lives node_ttl_s) and re-assert its live
        sessions. Returns True when Redis answered."""
        ttl_ms = int(self.config.cluster.node_ttl_s * 1000)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                key = self._node_key(self.node_id)
                pipe.hset(
                    key,
                    mapping={
                        "url": self.node_url,
                        "capacity": capacity,
                        "avatars": _listed(avatars),
                        "voices": _listed(voices),
                        "seen": time.time(),
                    },
                )
                pipe.pexpire(key, ttl_ms)
                pipe.sadd(f"{PREFIX}nodes", self.node_id)
                if live:
                    pipe.zadd(self._slots(self.node_id), {sid: "+inf" for sid in live})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if self.available:
                log.warning(
                    "cluster registry unreachable: %s; keeping %d live session(s), "
                    "taking no new ones until it is back",
                    exc,
                    len(live),
                )
            self.available = False
            return False
        if not self.available:
            log.info("cluster registry reached: node %s (%s) joined", self.node_id, self.node_url)
        self.available = True
        return True

    async def nodes(self) -> list[NodeInfo]:
        ids = sorted(await self._call("nodes", self.redis.smembers(f"{PREFIX}nodes")))
        found = []
        for node in ids:
            info = await self._call("node", self.redis.hgetall(self._node_key(node)))
            slots = self.redis.zcount(self._slots(node), time.time(), "+inf")
            used = await self._call("slots", slots)
            found.append(
                NodeInfo(
                    id=node,
                    url=info.get("url", ""),
                    capacity=int(info.get("capacity", 0)),
                    sessions=int(used),
                    alive=bool(info),
                )
            )
        return found

    async def node_url_of(self, node: str) -> str | None:
        """The URL of a live node, None when it is dead."""
        url = await self._call("node url", self.redis.hget(self._node_key(node), "url"))
        return str(url) if url else None

    async def leave(self) -> None:
        """A clean shutdown: this node's key goes now, not after its TTL."""
        try:
            await self.redis.delete(self._node_key(self.node_id))
            await self.redis.srem(f"{PREFIX}nodes", self.node_id)
        except (RedisError, OSError):
            pass
        await self._http.aclose()
        await self.redis.aclose()

    async def reap_dead_nodes(self) -> list[SessionRecord]:
        """End the sessions of nodes whose heartbeat lapsed (reason node_lost);
        returns the records this call ended (their webhooks are ours to fire).
        One node a heartbeat does it (a lock), so the scan stays one per beat
        however many nodes there are."""
        ended: list[SessionRecord] = []
        lock_ms = max(1, int(self.config.cluster.heartbeat_s * 1000) - 50)
        turn = self.redis.set(f"{PREFIX}reaper", self.node_id, nx=True, px=lock_ms)
        if not await self._call("reaper lock", turn):
            return ended
        for node in await self._call("nodes", self.redis.smembers(f"{PREFIX}nodes")):
            if await self._call("alive", self.redis.exists(self._node_key(node))):
                continue
            log.warning("node %s stopped answering: ending its sessions (node_lost)", node)
            for sid in await self._call("slots", self.redis.zrange(self._slots(node), 0, -1)):
                record = await self.get(sid)
                if record is not None and record.node == node:
                    if await self.end(sid, "node_lost", resumable=True):
                        ended.append(await self.get(sid) or record)
            await self._call("forget node", self.redis.delete(self._slots(node)))
            await self._call("forget node", self.redis.srem(f"{PREFIX}nodes", node))
        return ended

    # -------------------------------------------------------- sessions
    async def place(
        self,
        sid: str,
        expires_at: float,
        avatar: str | None,
        voice: str | None,
        preferred: str | None = None,
        stay: bool = False,
    ) -> str | None:
        """Reserve a slot for ``sid`` on the least loaded live node that has
        room (and the avatar and voice); None when no node has. ``preferred``
        (default: this node) wins ties, and with ``stay`` wins whenever it
        has room."""
        node = await self._call(
            "place",
            self._place(
                args=[
                    PREFIX,
                    sid,
                    repr(expires_at),
                    repr(time.time()),
                    avatar or "",
                    voice or "",
                    preferred or self.node_id,
                    "1" if stay else "0",
                ],
            ),
        )
        return str(node) if node else None

    async def save_waiting(
        self, sid: str, node: str, options: dict[str, Any], token: str, expires_at: float
    ) -> None:
        digest = token_hash(token)
        async with self.redis.pipeline(transaction=True) as pipe:
            origin = options.get("allowed_origin")
            if origin:
                server = self.config.server
                lasts = options.get("max_duration_s") or server.max_duration_s or 86_400
                pipe.zadd(f"{PREFIX}origins", {origin: expires_at + lasts}, gt=True)
            pipe.hset(
                self._session_key(sid),
                mapping={
                    "node": node,
                    "state": "waiting",
                    "options": json.dumps(options),
                    "token_hash": digest,
                    "created": time.time(),
                    "expires_at": expires_at,
                },
            )
            pipe.persist(self._session_key(sid))
            pipe.set(self._token_key(digest), sid)
            pipe.zadd(f"{PREFIX}sessions", {sid: time.time()})
            await self._call("save session", pipe.execute())

    async def move(self, sid: str, node: str, expires_at: float) -> None:
        """A resumed session waits on its new node."""
        key = self._session_key(sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"node": node, "state": "waiting", "expires_at": expires_at})
            pipe.hdel(key, "reason", "ended_at", "resumable")
            pipe.persist(key)
            digest = await self._call("token", self.redis.hget(key, "token_hash"))
            if digest:
                pipe.persist(self._token_key(digest))
            await self._call("move session", pipe.execute())

    async def mark_live(self, sid: str, avatar: str = "", voice: str = "") -> None:
        """The session runs here now, with this avatar and voice (resolved
        from defaults where it was minted without them)."""
        fields = {"state": "live", "node": self.node_id}
        if avatar:
            fields["avatar"] = avatar
        if voice:
            fields["voice"] = voice
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._session_key(sid), mapping=fields)
            pipe.zadd(self._slots(self.node_id), {sid: "+inf"})
            await self._call("session live", pipe.execute())

    async def release(self, node: str, sid: str) -> None:
        """Give back a reservation that was not used (the offer failed)."""
        await self._call("release", self.redis.zrem(self._slots(node), sid))

    async def save_turns(
        self, sid: str, transcript: list[dict[str, Any]], history: list[dict[str, str]]
    ) -> None:
        await self._call(
            "save turns",
            self.redis.hset(
                self._session_key(sid),
                mapping={"transcript": json.dumps(transcript), "history": json.dumps(history)},
            ),
        )

    async def end(self, sid: str, reason: str, resumable: bool) -> bool:
        """Mark ``sid`` ended; True only for the call that ended it."""
        done = await self._call(
            "end session",
            self._end(
                args=[PREFIX, sid, reason, repr(time.time()), int(resumable), self._ended_keep_s]
            ),
        )
        return bool(done)

    async def end_resumable(self, sid: str) -> None:
        """An ended session is deleted: no reconnect any more."""
        await self._call("end", self.redis.hset(self._session_key(sid), "resumable", "0"))

    async def origins(self) -> set[str]:
        """Origins of sessions that may still be used (CORS, any node)."""
        key = f"{PREFIX}origins"
        await self._call("origins", self.redis.zremrangebyscore(key, "-inf", time.time()))
        return set(await self._call("origins", self.redis.zrange(key, 0, -1)))

    async def exists(self, sid: str) -> bool:
        return bool(await self._call("session", self.redis.exists(self._session_key(sid))))

    async def get(self, sid: str) -> SessionRecord | None:
        raw = await self._call("session", self.redis.hgetall(self._session_key(sid)))
        return SessionRecord.from_hash(sid, raw) if raw else None

    async def session_of(self, token: str) -> str | None:
        sid = await self._call("token", self.redis.get(self._token_key(token_hash(token))))
        return str(sid) if sid else None

    async def records(self) -> list[SessionRecord]:
        """Every session the registry still holds, oldest first."""
        found = []
        for sid in await self._call("sessions", self.redis.zrange(f"{PREFIX}sessions", 0, -1)):
            record = await self.get(sid)
            if record is None:  # expired: forget the id too
                await self._call("sessions", self.redis.zrem(f"{PREFIX}sessions", sid))
            else:
                found.append(record)
        return found

    # ------------------------------------------------------ forwarding
    async def forward(self, request: Request, node: str, body: bytes | None = None) -> Response:
        """Pass ``request`` to the node that holds the session and hand back
        its answer as it is (status, JSON, Retry-After)."""
        if request.headers.get(FORWARDED_HEADER):
            # The other node sent it here: both disagree on the owner. Say so
            # rather than bounce it back.
            raise HTTPException(503, "the cluster is moving this session; try again")
        url = await self.node_url_of(node)
        if url is None:
            raise HTTPException(503, f"node {node} is not answering", {"Retry-After": "5"})
        # Not the Origin: this node checked it against its own host, which the
        # other node (reached at its internal URL) would not recognise.
        headers = {
            name: value
            for name, value in request.headers.items()
            if name in ("authorization", "content-type", "accept")
        }
        headers[FORWARDED_HEADER] = self.node_id
        target = url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            answer = await self._http.request(
                request.method,
                target,
                content=body if body is not None else await request.body(),
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise HTTPException(
                503, f"node {node} did not answer: {type(exc).__name__}", {"Retry-After": "5"}
            ) from None
        passed = {
            name: value
            for name, value in answer.headers.items()
            if name in ("content-type", "retry-after", "www-authenticate")
        }
        return Response(answer.content, status_code=answer.status_code, headers=passed)


async def keep_beating(registry: ClusterRegistry, manager: Any) -> None:
    """Heartbeat and reaper loop for the life of the server: publish this
    node, end dead nodes' sessions, and when Redis comes back, rejoin."""
    every = registry.config.cluster.heartbeat_s
    while True:
        was_available = registry.available
        live = list(manager.live)
        if await registry.heartbeat(
            manager.capacity, manager.avatar_names(), manager.voice_names(), live
        ):
            try:
                await manager.after_heartbeat(rejoined=not was_available)
            except HTTPException:
                pass  # Redis went away in between: the next beat says so
            except Exception:  # a bug here must not stop the heartbeat
                log.exception("cluster housekeeping failed")
        await asyncio.sleep(every)
