"""SWIM membership (Das, Gupta, Motivala 2002, as HashiCorp's memberlist does it), as a
pure state machine: messages and time in, instructions out.

No asyncio, no sockets, no clock: ``now`` and a ``random.Random`` are passed in, and
the node calls :meth:`Gossip.tick` when :meth:`Gossip.next_due` says something is due
(never on a fixed fast timer). Each probe period a node pings ONE member (round-robin
over a shuffled list); when no ack comes within ``probe_timeout_s`` it asks
``indirect_checks`` others to ping it (:class:`GossipPingReq`); with no ack by the end
of the period it suspects it. A suspicion turns into death after a timeout that grows
with log N and shrinks with independent confirmations (memberlist's suspicion.go),
unless the suspect refutes it by raising its incarnation. Joins, suspicions, deaths,
leaves and load changes spread piggybacked on pings and acks and, while there is
news, to ``gossip_nodes`` random members every ``gossip_interval_s``
(:class:`GossipNews`); each is sent ``retransmit_mult * ceil(log10(N + 1))`` times,
fewest-sent then newest first (memberlist's TransmitLimitedQueue). Epidemic news
reaches everyone only with high probability, so, as in memberlist, a joining node
swaps full state with its seeds (:class:`GossipSync`, push/pull), and every node with
one random member every ``push_pull_interval_s``. With no news, per node and period:
one ping out and on average one ack out, whatever N.

Transport: the gossip messages travel over the nodes' existing authenticated TCP
links (mesh/_connection.py), not over UDP. Why: every frame on those links is already
encrypted, MAC'd and sequence-numbered under the mesh secret (no replay, no
reordering), so no unauthenticated byte can touch membership and there is no second
codec or replay window to get wrong (one wire codec, one connection class). A UDP
design would need its own AEAD datagrams with a group key from mesh/_auth.py and a
per-sender replay window. The cost of TCP is one idle connection per member a node
has probed (an idle socket costs no CPU; a few hundred fds at most), and failure
detection is unchanged: a frozen machine's kernel still ACKs TCP, but the ping gets
no GossipAck, which is what SWIM waits for. Head-of-line blocking behind a big
transfer cannot delay pings: files move on links of their own.

Load (workers, running, queued) rides in a member's alive update; a change bumps the
node's incarnation (memberlist's UpdateNode does the same for metadata), so one
counter orders everything said about a node.

In the node (node/_peers.py): addresses from mDNS, ``--peer`` and ``Peers`` messages
go to :meth:`Gossip.join`, retried with backoff until a GossipSync reply comes (and
again for a member declared dead, so a frozen node that wakes learns it and
refutes); :class:`Send` goes over a link opened on demand and closed when idle, and
replies go back on the link a message came in on; one asyncio timer is armed at
:meth:`Gossip.next_due`; :class:`Changed` feeds the peer table and its ``peer NAME
(ADDR) joined`` / ``lost`` log lines (bench/scale.py reads them); ``set_load`` at most
once per probe period. Clients take no part in gossip: the nodes they link to push
them each member's changes of state (``Members``, node/_server.py), and they act on
those rather than on heartbeats of their own (client/_async.py).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from mesh._protocol import (
    GossipAck,
    GossipNews,
    GossipPing,
    GossipPingReq,
    GossipSync,
    MemberUpdate,
    Message,
)
from mesh.errors import RemoteProtocolError

__all__ = ["Changed", "Gossip", "GossipConfig", "Instruction", "Send", "State", "Update"]


class State(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class Update(NamedTuple):
    """What gossip says about one member; travels as a :data:`MemberUpdate` tuple."""

    node_id: str
    name: str
    address: str
    incarnation: int
    state: State
    origin: str  # node id of who said so (for a left member: itself)
    workers: int = 0
    running: int = 0
    queued: int = 0

    @classmethod
    def from_wire(cls, raw: MemberUpdate, origin: str) -> Update:
        """Raises RemoteProtocolError naming the sender when ``raw`` is not a member."""
        if raw[4] not in _STATES:
            raise RemoteProtocolError(
                f"gossip from {origin}: member {raw[0]!r} has unknown state {raw[4]}"
            )
        if raw[3] < 0 or min(raw[6:]) < 0:
            raise RemoteProtocolError(
                f"gossip from {origin}: member {raw[0]!r} has a negative incarnation or load"
            )
        host, _, port = raw[2].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RemoteProtocolError(
                f"gossip from {origin}: member {raw[0]!r} has no HOST:PORT address: {raw[2]!r}"
            )
        return cls(raw[0], raw[1], raw[2], raw[3], State(raw[4]), *raw[5:])

    def wire(self) -> MemberUpdate:
        return (self.node_id, self.name, self.address, self.incarnation, int(self.state),
                self.origin, self.workers, self.running, self.queued)  # fmt: skip


_STATES = frozenset(int(s) for s in State)


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings and fan-outs (memberlist's LAN defaults, shorter periods: a LAN's round
    trip is well under a millisecond, and a frozen node must go within seconds)."""

    probe_interval_s: float = 0.5
    probe_timeout_s: float = 0.2  # then ping-req, and the rest of the period to answer
    indirect_checks: int = 3
    # min suspicion = mult * max(1, log10 N) * probe_interval_s; mult - 2 independent
    # confirmations bring it down from max (= max_mult * min) to min.
    suspicion_mult: int = 3
    suspicion_max_mult: int = 2
    retransmit_mult: int = 4
    gossip_interval_s: float = 0.2  # while there is news: send it to gossip_nodes members
    gossip_nodes: int = 3
    max_piggyback: int = 16  # updates per message, newest/least sent first
    push_pull_interval_s: float = 30.0  # 0: only on join
    dead_forget_s: float = 30.0  # a dead or left member is kept (and told) this long


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to ``to``: a member's address, or the origin a message came from."""

    to: str
    msg: Message


@dataclass(frozen=True, slots=True)
class Changed:
    """A member is new (``previous`` None), changed state, or changed its load."""

    member: Update
    previous: State | None


Instruction = Send | Changed


@dataclass(slots=True)
class _Suspicion:
    """A suspicion's timer: ``max_s`` with no confirmations, down to ``min_s`` with ``k``."""

    started: float
    min_s: float
    max_s: float
    k: int
    confirmations: set[str]
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.deadline = self.started + (self.max_s if self.k >= 1 else self.min_s)

    def confirm(self, origin: str) -> bool:
        """Another node suspects it too; True when that was news (spread it again)."""
        n = len(self.confirmations) - 1  # the first origin is no confirmation
        if n >= self.k or origin in self.confirmations:
            return False
        self.confirmations.add(origin)
        frac = math.log(n + 2) / math.log(self.k + 1)
        timeout = max(self.min_s, self.max_s - frac * (self.max_s - self.min_s))
        self.deadline = self.started + timeout
        return True


@dataclass(slots=True, eq=False)
class _Member:
    update: Update  # the newest we accepted (state, incarnation, load)
    since: float  # when it entered its state
    suspicion: _Suspicion | None = None


@dataclass(slots=True)
class _Probe:
    target: str  # node id
    seq: int
    started: float
    indirect: bool = False


@dataclass(slots=True)
class _Relay:
    """A ping we send for another node's GossipPingReq: its ack goes back to ``origin``."""

    origin: str
    seq: int
    expires: float


@dataclass(slots=True)
class _Broadcasts:
    """Updates being spread, one per member (a newer one replaces an older)."""

    items: dict[str, tuple[Update, int, int]] = field(default_factory=dict)  # id -> (u, sent, n)
    counter: int = 0

    def queue(self, u: Update) -> None:
        self.counter += 1
        self.items[u.node_id] = (u, 0, self.counter)

    def take(self, limit: int, max_transmits: int) -> tuple[MemberUpdate, ...]:
        """Up to ``limit`` updates, least sent first, then newest; each counts as sent."""
        chosen = sorted(self.items.values(), key=lambda b: (b[1], -b[2]))[:limit]
        for u, sent, n in chosen:
            if sent + 1 >= max_transmits:
                del self.items[u.node_id]
            else:
                self.items[u.node_id] = (u, sent + 1, n)
        return tuple(b[0].wire() for b in chosen)


class Gossip:
    """One node's view of its mesh, kept by SWIM. See the module docstring."""

    def __init__(
        self,
        node_id: str,
        name: str,
        address: str,
        *,
        now: float,
        rng: random.Random,
        config: GossipConfig | None = None,
        workers: int = 0,
    ) -> None:
        self.config = config or GossipConfig()
        self._rng = rng
        self._me = Update(node_id, name, address, 0, State.ALIVE, node_id, workers)
        self._members: dict[str, _Member] = {}
        self._broadcasts = _Broadcasts()
        self._order: list[str] = []  # probe order: node ids, shuffled each round
        self._index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._leaving = False
        self._announced = False  # our own alive news is spread once a join is answered
        self._next_probe = math.inf  # armed when there is someone to probe
        self._next_gossip = now  # news goes out at once, then every gossip_interval_s
        self._next_sync = (
            now + self.config.push_pull_interval_s if self.config.push_pull_interval_s else math.inf
        )

    # ---- what the node reads ----

    @property
    def me(self) -> Update:
        return self._me

    def members(self) -> list[Update]:
        """Every other member known, dead and left ones too (until forgotten)."""
        return [m.update for m in self._members.values()]

    def live(self) -> list[Update]:
        """Members that are alive or only suspected (suspects still take work)."""
        return [m.update for m in self._members.values() if m.update.state <= State.SUSPECT]

    def next_due(self) -> float:
        """When :meth:`tick` has something to do (math.inf: nothing until a message)."""
        due = min(self._next_probe, self._next_sync)
        if self._broadcasts.items and self.config.gossip_nodes:
            due = min(due, self._next_gossip)
        if self._probe is not None:
            p = self._probe
            due = min(due, p.started + (self.config.probe_interval_s if p.indirect
                                        else self.config.probe_timeout_s))  # fmt: skip
        for m in self._members.values():
            if m.suspicion is not None:
                due = min(due, m.suspicion.deadline)
            elif m.update.state >= State.DEAD:
                due = min(due, m.since + self.config.dead_forget_s)
        if self._relays:
            due = min(due, min(r.expires for r in self._relays.values()))
        return due

    # ---- events ----

    def join(self, seeds: Sequence[str], now: float) -> list[Instruction]:
        """Swap full state with each seed address (push/pull); their members follow."""
        state = self._state()
        return [Send(addr, GossipSync(state)) for addr in seeds if addr != self._me.address]

    def set_load(self, workers: int, running: int, queued: int) -> None:
        """Spread a load change (a new incarnation of this node's alive update)."""
        if (workers, running, queued) != self._me[6:] and not self._leaving:
            self._me = self._me._replace(workers=workers, running=running, queued=queued)
            self._bump()

    def set_name(self, name: str) -> None:
        """Spread a new name (names are unique among live nodes: node/_peers.py)."""
        if name != self._me.name and not self._leaving:
            self._me = self._me._replace(name=name)
            self._bump()

    def leave(self, now: float) -> list[Instruction]:
        """Say this node leaves: to ``indirect_checks`` live members now, then no more probes."""
        self._leaving = True
        self._bump()
        self._probe, self._next_probe, self._next_sync = None, math.inf, math.inf
        targets = self._random_live(self.config.indirect_checks, exclude=())
        return [Send(m.address, GossipPing(self._next_seq(), m.node_id, self._piggyback()))
                for m in targets]  # fmt: skip

    def tick(self, now: float) -> list[Instruction]:
        """Do what is due at ``now``: suspicions that ripened, the probe's next step, a
        new probe, a periodic push/pull, relays and dead members to forget."""
        out: list[Instruction] = []
        cfg = self.config
        for m in list(self._members.values()):
            u = m.update
            if m.suspicion is not None and now >= m.suspicion.deadline:
                self._dead(u._replace(state=State.DEAD, origin=self._me.node_id), now, out)
            elif u.state >= State.DEAD and now >= m.since + cfg.dead_forget_s:
                del self._members[u.node_id]
        self._relays = {s: r for s, r in self._relays.items() if r.expires > now}
        p = self._probe
        if p is not None and not p.indirect and now >= p.started + cfg.probe_timeout_s:
            p.indirect = True
            target = self._members.get(p.target)
            if target is not None:
                for peer in self._random_live(cfg.indirect_checks, exclude=(p.target,)):
                    req = GossipPingReq(p.seq, p.target, target.update.address, self._piggyback())
                    out.append(Send(peer.address, req))
        if p is not None and now >= p.started + cfg.probe_interval_s:
            self._probe = None
            target = self._members.get(p.target)
            # A suspect we fail to reach too: our suspicion confirms the others'
            # (memberlist's probeNode does the same), so it dies after the shorter
            # timeout, not the longest one.
            if target is not None and target.update.state <= State.SUSPECT:
                u = target.update._replace(state=State.SUSPECT, origin=self._me.node_id)
                self._suspect(u, now, out)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now, out)
        if self._broadcasts.items and cfg.gossip_nodes and now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval_s
            # Suspects too: the suspect is the one that most needs to hear it.
            peers = self._random_live(cfg.gossip_nodes, exclude=(), suspects=True)
            if not peers:  # news for nobody: a joiner gets our state by push/pull
                self._broadcasts.items.clear()
            for peer in peers:
                news = self._piggyback()
                if news:
                    out.append(Send(peer.address, GossipNews(news)))
        if now >= self._next_sync and not self._leaving:
            self._next_sync = now + cfg.push_pull_interval_s
            for peer in self._random_live(1, exclude=()):
                out.append(Send(peer.address, GossipSync(self._state())))
        return out

    def received(self, origin: str, msg: Message, now: float) -> list[Instruction]:
        """A gossip message from ``origin`` (where replies go). Raises
        RemoteProtocolError for an update that is not one, TypeError for a message
        that is not gossip."""
        out: list[Instruction] = []
        if isinstance(msg, GossipSync):
            for raw in msg.members:
                self._merge(Update.from_wire(raw, origin), now, out)
            if not msg.reply:
                out.append(Send(origin, GossipSync(self._state(), reply=True)))
            elif not self._announced and not self._leaving:
                # Our join was answered: spread our own alive news too (memberlist's
                # setAlive), so that members who missed the seed's news of us (they
                # joined after it was sent) hear it from us, not at the next push/pull.
                self._announced = True
                self._broadcasts.queue(self._me)
            return out
        if not isinstance(msg, GossipPing | GossipAck | GossipPingReq | GossipNews):
            raise TypeError(f"not a gossip message: {type(msg).__name__}")
        for raw in msg.updates:
            self._apply(Update.from_wire(raw, origin), now, out)
        if isinstance(msg, GossipNews):
            pass
        elif isinstance(msg, GossipPing):
            if msg.target == self._me.node_id:  # else: an address that changed hands
                out.append(Send(origin, GossipAck(msg.seq, self._piggyback())))
        elif isinstance(msg, GossipAck):
            if self._probe is not None and self._probe.seq == msg.seq:
                self._probe = None
            relay = self._relays.pop(msg.seq, None)
            if relay is not None:
                out.append(Send(relay.origin, GossipAck(relay.seq, self._piggyback())))
        else:
            seq = self._next_seq()
            self._relays[seq] = _Relay(origin, msg.seq, now + self.config.probe_timeout_s)
            out.append(Send(msg.address, GossipPing(seq, msg.target, self._piggyback())))
        return out

    # ---- probing ----

    def _start_probe(self, now: float, out: list[Instruction]) -> None:
        """Ping the next live member of the round; a new shuffled round when one ends."""
        self._next_probe = now + self.config.probe_interval_s
        for _ in range(2 * len(self._order) + 1):  # the rest of this round, a whole next
            if self._index >= len(self._order):
                self._order = [i for i in self._order if i in self._members]
                self._rng.shuffle(self._order)
                self._index = 0
                if not self._order:
                    break
            node_id = self._order[self._index]
            self._index += 1
            m = self._members.get(node_id)
            if m is not None and m.update.state <= State.SUSPECT:
                seq = self._next_seq()
                self._probe = _Probe(node_id, seq, now)
                out.append(Send(m.update.address, GossipPing(seq, node_id, self._piggyback())))
                return
        self._next_probe = math.inf  # nobody to probe: re-armed when someone appears

    def _random_live(self, k: int, exclude: Sequence[str], suspects: bool = False) -> list[Update]:
        """Up to ``k`` random alive members (and suspected ones, if ``suspects``)."""
        top = State.SUSPECT if suspects else State.ALIVE
        live = [u for u in self.live() if u.state <= top and u.node_id not in exclude]
        return self._rng.sample(live, min(k, len(live)))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---- dissemination ----

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        n = len(self._members) + 1
        limit = self.config.retransmit_mult * math.ceil(math.log10(n + 1))
        return self._broadcasts.take(self.config.max_piggyback, limit)

    def _state(self) -> tuple[MemberUpdate, ...]:
        return (self._me.wire(), *(m.update.wire() for m in self._members.values()))

    def _bump(self, incarnation: int | None = None) -> None:
        """A new incarnation of this node, past ``incarnation`` if given, spread: a load
        change, a refutation, a leave."""
        now_at = self._me.incarnation if incarnation is None else incarnation
        state = State.LEFT if self._leaving else State.ALIVE
        self._me = self._me._replace(incarnation=now_at + 1, state=state)
        self._broadcasts.queue(self._me)

    # ---- applying what others say (memberlist's aliveNode/suspectNode/deadNode) ----

    def _apply(self, u: Update, now: float, out: list[Instruction]) -> None:
        if u.state == State.ALIVE:
            self._alive(u, now, out)
        elif u.state == State.SUSPECT:
            self._suspect(u, now, out)
        else:
            self._dead(u, now, out)

    def _merge(self, u: Update, now: float, out: list[Instruction]) -> None:
        """Full state from a push/pull: a dead member there is only a suspect here (it
        may be alive again); a left one has left."""
        if u.state in (State.DEAD, State.SUSPECT):
            u = u._replace(state=State.SUSPECT, origin=self._me.node_id)
        self._apply(u, now, out)

    def _refute(self, incarnation: int) -> None:
        if not self._leaving:
            self._bump(incarnation)

    def _alive(self, u: Update, now: float, out: list[Instruction]) -> None:
        if u.node_id == self._me.node_id:
            if u.incarnation > self._me.incarnation:  # old news of an earlier life of ours
                self._refute(u.incarnation)
            return
        m = self._members.get(u.node_id)
        if m is not None and u.incarnation <= m.update.incarnation:
            return
        previous = None if m is None else m.update.state
        if m is None:
            self._members[u.node_id] = _Member(u, now)
            # A random place in the round, so that joiners are not all probed last.
            if u.node_id not in self._order:
                self._order.insert(self._rng.randint(0, len(self._order)), u.node_id)
        else:
            if m.update.state != State.ALIVE:
                m.since = now
            m.update, m.suspicion = u, None
        if self._next_probe == math.inf and not self._leaving:
            self._next_probe = now
        self._broadcasts.queue(u)
        out.append(Changed(u, previous))

    def _suspect(self, u: Update, now: float, out: list[Instruction]) -> None:
        if u.node_id == self._me.node_id:
            if u.incarnation >= self._me.incarnation:
                self._refute(u.incarnation)
            return
        m = self._members.get(u.node_id)
        if m is None or u.incarnation < m.update.incarnation or m.update.state >= State.DEAD:
            return
        if m.update.state == State.SUSPECT:
            if m.suspicion is not None and m.suspicion.confirm(u.origin):
                self._broadcasts.queue(u._replace(incarnation=m.update.incarnation))
            return
        cfg = self.config
        n = 1 + sum(x.update.state <= State.SUSPECT for x in self._members.values())
        min_s = cfg.suspicion_mult * max(1.0, math.log10(n)) * cfg.probe_interval_s
        k = cfg.suspicion_mult - 2 if n - 2 >= cfg.suspicion_mult - 2 else 0
        m.suspicion = _Suspicion(now, min_s, cfg.suspicion_max_mult * min_s, k, {u.origin})
        new = m.update._replace(incarnation=u.incarnation, state=State.SUSPECT, origin=u.origin)
        m.update, m.since = new, now
        self._broadcasts.queue(new)
        out.append(Changed(new, State.ALIVE))

    def _dead(self, u: Update, now: float, out: list[Instruction]) -> None:
        if u.node_id == self._me.node_id:
            if u.incarnation >= self._me.incarnation:
                self._refute(u.incarnation)
            return
        m = self._members.get(u.node_id)
        if m is None or u.incarnation < m.update.incarnation or m.update.state >= State.DEAD:
            return
        state = State.LEFT if u.origin == u.node_id else State.DEAD
        previous = m.update.state
        new = m.update._replace(incarnation=u.incarnation, state=state, origin=u.origin)
        m.update, m.since, m.suspicion = new, now, None
        self._broadcasts.queue(new)
        out.append(Changed(new, previous))
