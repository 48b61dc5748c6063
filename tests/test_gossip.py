"""SWIM membership (mesh/_gossip.py): messages and time in, exact instructions out, no
I/O; then many protocol objects wired through an in-memory network with loss."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from mesh._gossip import Changed, Gossip, GossipConfig, Instruction, Send, State, Update
from mesh._protocol import (
    GossipAck,
    GossipNews,
    GossipPing,
    GossipPingReq,
    GossipSync,
    Load,
    MemberUpdate,
    decode,
    encode,
)
from mesh.errors import RemoteProtocolError

# Probes alone: no periodic push/pull, no gossip timer for news (tests that want them say so).
CFG = GossipConfig(push_pull_interval_s=0.0, gossip_nodes=0)
MESH = GossipConfig(push_pull_interval_s=0.0)  # probes and news, no push/pull
SIM = GossipConfig(push_pull_interval_s=15.0)
ME = "id0"


def addr(i: int) -> str:
    return f"10.0.0.{i}:7390"


def upd(
    i: int, inc: int = 0, state: State = State.ALIVE, origin: str = "", load: int = 0
) -> Update:
    """Member ``i`` as gossip says it; origin defaults to itself."""
    return Update(f"id{i}", f"n{i}", addr(i), inc, state, origin or f"id{i}", 1, load, 0)


def wire(*us: Update) -> tuple[MemberUpdate, ...]:
    return tuple(u.wire() for u in us)


def gossip(cfg: GossipConfig = CFG, seed: int = 0, i: int = 0) -> Gossip:
    return Gossip(
        f"id{i}", f"n{i}", addr(i), now=0.0, rng=random.Random(seed), config=cfg, workers=1
    )


def knowing(g: Gossip, *members: int, now: float = 0.0) -> Gossip:
    """``g`` told of ``members`` (a push/pull reply) with nothing left to spread."""
    g.received(addr(99), GossipSync(wire(*(upd(i) for i in members)), reply=True), now)
    drain(g)
    return g


def drain(g: Gossip) -> list[tuple[MemberUpdate, ...]]:
    """Piggybacks of acks to pings, until ``g`` has nothing left to spread."""
    sent = []
    while True:
        (ack,) = g.received(addr(98), GossipPing(1, g.me.node_id), 0.0)
        assert isinstance(ack, Send) and isinstance(ack.msg, GossipAck)
        if not ack.msg.updates:
            return sent
        sent.append(ack.msg.updates)


def sends(out: list[Instruction]) -> list[Send]:
    return [x for x in out if isinstance(x, Send)]


def about(node_id: str, out: list[Instruction]) -> list[Changed]:
    return [x for x in out if isinstance(x, Changed) and x.member.node_id == node_id]


# ---- the wire ----


def test_gossip_messages_round_trip_through_the_codec() -> None:
    for msg in (
        GossipPing(3, "id1", wire(upd(1, 2, State.SUSPECT, "id0"))),
        GossipAck(3),
        GossipPingReq(4, "id2", addr(2), wire(upd(2))),
        GossipSync(wire(upd(1), upd(2, 1, State.LEFT)), reply=True),
        GossipNews(wire(upd(5, 7, State.DEAD, "id1"))),
    ):
        assert decode(encode(msg)) == msg


def test_an_update_with_an_unknown_state_is_refused_naming_sender_and_member() -> None:
    g = gossip()
    bad = ("id1", "n1", addr(1), 0, 7, "id1", 1, 0, 0)
    with pytest.raises(
        RemoteProtocolError, match=r"gossip from 10.0.0.9:7390: member 'id1' has unknown state 7"
    ):
        g.received(addr(9), GossipNews((bad,)), 0.0)
    negative = ("id1", "n1", addr(1), -1, 0, "id1", 1, 0, 0)
    with pytest.raises(RemoteProtocolError, match="negative incarnation"):
        g.received(addr(9), GossipSync((negative,)), 0.0)
    for address in ("10.0.0.1", "10.0.0.1:x", ":7390", "10.0.0.1:0", "10.0.0.1:65536"):
        nowhere = ("id1", "n1", address, 0, 0, "id1", 1, 0, 0)
        with pytest.raises(RemoteProtocolError, match=f"no HOST:PORT address: '{address}'"):
            g.received(addr(9), GossipNews((nowhere,)), 0.0)
    assert g.members() == []


def test_a_message_that_is_not_gossip_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not a gossip message: Load"):
        gossip().received(addr(1), Load("id1", "n1", 1, 0, 0), 0.0)


# ---- joining ----


def test_join_swaps_full_state_with_each_seed_but_itself() -> None:
    g = gossip()
    assert g.join([addr(1), addr(0), addr(2)], 0.0) == [
        Send(addr(1), GossipSync(wire(g.me))),
        Send(addr(2), GossipSync(wire(g.me))),
    ]
    assert g.me == Update("id0", "n0", addr(0), 0, State.ALIVE, "id0", 1, 0, 0)


def test_a_push_is_merged_and_answered_with_our_state_a_pull_is_not_answered() -> None:
    g = gossip()
    out = g.received(addr(1), GossipSync(wire(upd(1), upd(2))), 0.0)
    assert out == [
        Changed(upd(1), None),
        Changed(upd(2), None),
        Send(addr(1), GossipSync(wire(g.me, upd(1), upd(2)), reply=True)),
    ]
    assert g.received(addr(3), GossipSync(wire(upd(3)), reply=True), 0.0) == [Changed(upd(3), None)]
    assert g.live() == [upd(1), upd(2), upd(3)]


def test_a_joiner_spreads_its_own_alive_news_once_its_join_is_answered() -> None:
    g = gossip()
    g.received(addr(1), GossipSync(wire(upd(1))), 0.0)  # a push from another: not our join
    assert drain(g) == [(upd(1).wire(),)] * 4  # (4 sends: retransmit_mult x log10 N)
    g.received(addr(2), GossipSync(wire(upd(2)), reply=True), 0.0)  # our join, answered
    # Ourselves first (newest, then the member just heard of), as often as any news.
    assert drain(g) == [(g.me.wire(), upd(2).wire())] * 4
    g.received(addr(3), GossipSync(wire(upd(3)), reply=True), 0.0)  # a second seed answers
    assert drain(g) == [(upd(3).wire(),)] * 4  # we are announced already


def test_a_dead_member_in_a_push_is_only_suspected_here_a_left_one_has_left() -> None:
    g = knowing(gossip(), 1, 2)
    out = g.received(
        addr(3),
        GossipSync(wire(upd(1, 0, State.DEAD, "id3"), upd(2, 0, State.LEFT)), reply=True),
        5.0,
    )
    assert out == [
        Changed(upd(1, 0, State.SUSPECT, ME), State.ALIVE),
        Changed(upd(2, 0, State.LEFT, "id2"), State.ALIVE),
    ]


# ---- probing ----


def test_alone_nothing_is_ever_due() -> None:
    g = gossip()
    assert g.next_due() == math.inf
    assert g.tick(100.0) == []
    assert gossip(GossipConfig()).next_due() == 30.0  # the periodic push/pull


def test_a_ping_is_acked_with_its_seq_only_by_the_node_it_names() -> None:
    g = gossip()
    assert g.received(addr(1), GossipPing(7, ME), 0.0) == [Send(addr(1), GossipAck(7))]
    assert g.received(addr(1), GossipPing(8, "id5"), 0.0) == []


def test_each_round_probes_every_member_once_in_a_new_shuffled_order() -> None:
    g = knowing(gossip(), 1, 2, 3)
    rounds = []
    for r in range(3):
        targets = []
        for p in range(3):
            now = (3 * r + p) * CFG.probe_interval_s
            assert g.next_due() == now
            (ping,) = g.tick(now)
            assert isinstance(ping, Send) and isinstance(ping.msg, GossipPing)
            assert ping.to == addr(int(ping.msg.target[2:]))
            targets.append(ping.msg.target)
            assert g.received(ping.to, GossipAck(ping.msg.seq), now + 0.001) == []
        assert sorted(targets) == ["id1", "id2", "id3"]
        rounds.append(targets)
    assert len({tuple(t) for t in rounds}) > 1  # reshuffled


def test_a_direct_probe_timeout_asks_k_others_then_an_indirect_ack_ends_the_probe() -> None:
    g = knowing(gossip(), 1, 2, 3, 4, 5)
    (ping,) = g.tick(0.0)
    assert isinstance(ping.msg, GossipPing)
    target, seq = ping.msg.target, ping.msg.seq
    assert g.next_due() == CFG.probe_timeout_s
    assert g.tick(0.1) == []
    reqs = g.tick(CFG.probe_timeout_s)
    tn = int(target[2:])
    assert len(reqs) == CFG.indirect_checks == 3
    assert {r.to for r in sends(reqs)} <= {addr(i) for i in range(1, 6) if i != tn}
    assert len({r.to for r in sends(reqs)}) == 3
    assert all(r.msg == GossipPingReq(seq, target, addr(tn)) for r in sends(reqs))
    assert g.next_due() == CFG.probe_interval_s
    assert g.received(reqs[0].to, GossipAck(seq), 0.3) == []  # relayed: alive
    (next_ping,) = g.tick(CFG.probe_interval_s)  # no suspicion, the next probe
    assert isinstance(next_ping.msg, GossipPing) and next_ping.msg.target != target


def test_a_relay_pings_the_target_for_the_asker_and_passes_its_ack_back_once() -> None:
    g = gossip()
    out = g.received(addr(1), GossipPingReq(9, "id3", addr(3)), 0.0)
    assert out == [Send(addr(3), GossipPing(1, "id3"))]
    assert g.next_due() == CFG.probe_timeout_s  # the relay's expiry
    assert g.received(addr(3), GossipAck(1), 0.1) == [Send(addr(1), GossipAck(9))]
    assert g.received(addr(3), GossipAck(1), 0.1) == []
    g.received(addr(1), GossipPingReq(10, "id3", addr(3)), 1.0)
    g.tick(1.0 + CFG.probe_timeout_s)  # expired unanswered: a late ack is dropped
    assert g.received(addr(3), GossipAck(2), 1.5) == []
    assert g.next_due() == math.inf


def _fail_probe(g: Gossip, at: float = 0.0) -> tuple[str, list[Instruction]]:
    """Run one probe of ``g`` with no ack at all; the target and the period-end output."""
    (ping,) = g.tick(at)
    assert isinstance(ping.msg, GossipPing)
    g.tick(at + CFG.probe_timeout_s)
    return ping.msg.target, g.tick(at + CFG.probe_interval_s)


def test_no_ack_by_the_end_of_the_period_suspects_then_the_timeout_declares_dead() -> None:
    g = knowing(gossip(), 1, 2, 3)
    target, out = _fail_probe(g)
    n = int(target[2:])
    suspect = upd(n, 0, State.SUSPECT, ME)
    assert out[0] == Changed(suspect, State.ALIVE)
    assert isinstance(out[1], Send) and isinstance(out[1].msg, GossipPing)  # the next probe
    assert out[1].msg.updates[0] == suspect.wire()  # the suspicion spreads first
    # 4 members: k = 3 - 2 = 1 confirmation wanted; none came, so the max timeout,
    # suspicion_max_mult * suspicion_mult * max(1, log10 4) * probe_interval_s.
    assert CFG.suspicion_max_mult * CFG.suspicion_mult * 1.0 * CFG.probe_interval_s == 3.0
    start = CFG.probe_interval_s
    assert out[1].msg.target != target
    assert about(target, g.tick(start + 2.999)) == []  # (other probes fail meanwhile)
    assert about(target, g.tick(start + 3.0)) == [Changed(upd(n, 0, State.DEAD, ME), State.SUSPECT)]
    assert target not in [u.node_id for u in g.live()]


@pytest.mark.parametrize(("members", "max_s"), [(3, 3.0), (9, 3.0), (99, 6.0)])
def test_the_suspicion_timeout_grows_with_log_n(members: int, max_s: float) -> None:
    # max = suspicion_max_mult * suspicion_mult * max(1, log10 N) * probe_interval_s
    g = knowing(gossip(), *range(1, members + 1))
    target, _ = _fail_probe(g)
    n = int(target[2:])
    start = CFG.probe_interval_s
    assert about(target, g.tick(start + max_s - 0.001)) == []
    assert about(target, g.tick(start + max_s)) == [
        Changed(upd(n, 0, State.DEAD, ME), State.SUSPECT)
    ]


def test_dead_members_are_not_probed_and_ping_reqs_go_to_as_many_as_there_are() -> None:
    g = knowing(gossip(), 1, 2, 3)
    g.received(addr(9), GossipNews(wire(upd(3, 0, State.DEAD, "id9"))), 0.0)
    targets = []
    for p in range(6):
        (ping,) = g.tick(p * CFG.probe_interval_s)
        assert isinstance(ping.msg, GossipPing)
        targets.append(ping.msg.target)
        if p < 5:
            g.received(ping.to, GossipAck(ping.msg.seq), p * CFG.probe_interval_s)
    assert sorted(targets) == ["id1", "id1", "id1", "id2", "id2", "id2"]
    # The last probe goes unanswered: the one other live member is asked, not k = 3.
    reqs = sends(g.tick(5 * CFG.probe_interval_s + CFG.probe_timeout_s))
    other = "id2" if targets[-1] == "id1" else "id1"
    assert [r.to for r in reqs] == [addr(int(other[2:]))]


def test_with_every_member_dead_nothing_is_probed_until_one_comes_back() -> None:
    g = knowing(gossip(), 1)
    g.received(addr(9), GossipNews(wire(upd(1, 0, State.DEAD, "id9"))), 0.0)
    assert g.tick(0.0) == []
    assert g.next_due() == CFG.dead_forget_s  # only forgetting it is due
    assert g.received(addr(1), GossipNews(wire(upd(1, 1))), 2.0) == [Changed(upd(1, 1), State.DEAD)]
    assert g.next_due() == 2.0
    assert g.tick(2.0) == [Send(addr(1), GossipPing(1, "id1", wire(upd(1, 1))))]


def test_the_one_survivor_of_a_round_is_probed_every_period() -> None:
    g = knowing(gossip(seed=3), 1, 2, 3, 4, 5)
    for p in range(2):  # into the round
        (ping,) = g.tick(p * CFG.probe_interval_s)
        assert isinstance(ping.msg, GossipPing)
        g.received(ping.to, GossipAck(ping.msg.seq), p * CFG.probe_interval_s)
    dead = [upd(i, 0, State.DEAD, "id9") for i in (1, 2, 3, 4)]
    g.received(addr(9), GossipNews(wire(*dead)), 0.9)
    for p in range(2, 12):
        (ping,) = [
            s for s in sends(g.tick(p * CFG.probe_interval_s)) if isinstance(s.msg, GossipPing)
        ]
        assert ping.to == addr(5) and isinstance(ping.msg, GossipPing)
        g.received(ping.to, GossipAck(ping.msg.seq), p * CFG.probe_interval_s)


def test_a_confirmation_from_another_node_brings_the_timeout_down_to_the_minimum() -> None:
    g = knowing(gossip(), 1, 2, 3)
    target, _ = _fail_probe(g)
    n = int(target[2:])
    other = "id2" if target != "id2" else "id3"
    g.received(addr(9), GossipNews(wire(upd(n, 0, State.SUSPECT, other))), 0.6)
    assert drain(g)[0][0] == upd(n, 0, State.SUSPECT, other).wire()  # news: spread again
    g.received(addr(9), GossipNews(wire(upd(n, 0, State.SUSPECT, other))), 0.7)
    assert drain(g) == []  # the same confirmation twice is no news
    # min = 3 * max(1, log10 4) * 0.5 s from the suspicion's start, 0.5 s
    assert about(target, g.tick(1.999)) == []
    assert about(target, g.tick(2.0)) == [Changed(upd(n, 0, State.DEAD, ME), State.SUSPECT)]


def test_failing_to_reach_a_suspect_ourselves_confirms_the_suspicion() -> None:
    g = knowing(gossip(), 1, 2, 3)
    (ping,) = g.tick(0.0)
    assert isinstance(ping.msg, GossipPing)
    target = ping.msg.target
    n = int(target[2:])
    other = "id2" if target != "id2" else "id3"
    # Another node's suspicion arrives first: alone it dies after max = 2 x 1.5 s.
    g.received(addr(9), GossipNews(wire(upd(n, 0, State.SUSPECT, other))), 0.1)
    drain(g)
    g.tick(0.2)  # ping-reqs
    out = g.tick(0.5)  # our own probe failed too: we confirm, and say so
    assert about(target, out) == []  # still a suspect, no new state
    said = [u for x in sends(out) for u in getattr(x.msg, "updates", ())]
    assert upd(n, 0, State.SUSPECT, ME).wire() in said
    # min = 3 * max(1, log10 4) * 0.5 s from the suspicion's start (0.1 s)
    assert about(target, g.tick(1.599)) == []
    assert about(target, g.tick(1.6)) == [Changed(upd(n, 0, State.DEAD, ME), State.SUSPECT)]


def test_a_suspected_node_refutes_with_a_higher_incarnation() -> None:
    g = knowing(gossip(), 1)
    assert g.received(addr(1), GossipNews(wire(upd(0, 0, State.SUSPECT, "id1"))), 1.0) == []
    assert g.me.incarnation == 1 and g.me.state == State.ALIVE
    assert drain(g)[0] == (g.me.wire(),)
    g.received(addr(1), GossipNews(wire(upd(0, 3, State.DEAD, "id1"))), 2.0)
    assert g.me.incarnation == 4  # past what was said of it
    g.received(addr(1), GossipNews(wire(upd(0, 2, State.SUSPECT, "id1"))), 3.0)
    assert g.me.incarnation == 4  # old news needs no answer


def test_a_refutation_clears_the_suspicion_and_older_news_is_ignored() -> None:
    g = knowing(gossip(), 1, 2, 3)
    target, _ = _fail_probe(g)
    n = int(target[2:])
    out = g.received(addr(n), GossipNews(wire(upd(n, 1))), 1.0)
    assert out == [Changed(upd(n, 1), State.SUSPECT)]
    assert g.received(addr(2), GossipNews(wire(upd(n, 0, State.SUSPECT, "id2"))), 1.1) == []
    assert g.received(addr(2), GossipNews(wire(upd(n, 0, State.DEAD, "id2"))), 1.2) == []
    assert all(c.member.state != State.DEAD for c in g.tick(10.0) if isinstance(c, Changed))
    assert upd(n, 1) in g.live()


def test_a_dead_member_is_only_revived_by_a_higher_incarnation_and_forgotten_in_time() -> None:
    g = knowing(gossip(), 1, 2)
    g.received(addr(2), GossipNews(wire(upd(1, 0, State.DEAD, "id2"))), 1.0)
    assert g.received(addr(1), GossipNews(wire(upd(1, 0))), 1.5) == []
    drain(g)
    assert g.next_due() <= 1.0 + CFG.dead_forget_s
    g.tick(1.0 + CFG.dead_forget_s)
    assert [u.node_id for u in g.members()] == ["id2"]
    assert g.received(addr(1), GossipNews(wire(upd(1, 0))), 40.0) == [Changed(upd(1, 0), None)]


def test_leave_tells_k_members_which_mark_it_left_and_never_suspect_it() -> None:
    leaver = knowing(gossip(seed=1), 1, 2, 3, 4)
    out = leaver.leave(5.0)
    left = Update("id0", "n0", addr(0), 1, State.LEFT, "id0", 1, 0, 0)
    assert len(out) == 3 and len({s.to for s in sends(out)}) == 3
    for s in sends(out):
        assert isinstance(s.msg, GossipPing) and s.msg.updates[0] == left.wire()
    assert leaver.next_due() == math.inf and leaver.tick(6.0) == []
    h = knowing(gossip(i=1), 0, 2)
    assert h.received(addr(0), out[0].msg, 5.0)[0] == Changed(left, State.ALIVE)
    assert h.received(addr(2), GossipNews(wire(upd(0, 1, State.SUSPECT, "id2"))), 5.1) == []
    assert [u.node_id for u in h.live()] == ["id2"]
    leaver.received(addr(1), GossipNews(wire(upd(0, 1, State.DEAD, "id1"))), 6.0)
    assert leaver.me == left  # a leaving node does not refute


# ---- dissemination ----


def test_dissemination_least_sent_first_then_newest_and_each_update_sent_a_limited_number_of_times() -> (
    None
):
    cfg = GossipConfig(push_pull_interval_s=0.0, max_piggyback=2, retransmit_mult=2)
    g = gossip(cfg)
    for i in (1, 2, 3):
        g.received(addr(9), GossipNews(wire(upd(i))), 0.0)
    # 4 members: limit = 2 * ceil(log10(4 + 1)) = 2 sends of each update.
    assert drain(g) == [wire(upd(3), upd(2)), wire(upd(1), upd(3)), wire(upd(2), upd(1))]


def test_a_newer_update_about_a_member_replaces_the_older_one_being_spread() -> None:
    g = gossip()
    g.received(addr(9), GossipNews(wire(upd(1))), 0.0)
    g.received(addr(9), GossipNews(wire(upd(1, 1))), 0.0)
    assert {u for sent in drain(g) for u in sent} == {upd(1, 1).wire()}


def test_news_goes_to_gossip_nodes_members_at_once_then_every_interval_and_stops_when_spread() -> (
    None
):
    g = knowing(gossip(MESH), 1, 2, 3, 4, 5)
    (ping,) = g.tick(0.0)  # a probe starts (nothing to piggyback), and is answered
    assert isinstance(ping.msg, GossipPing) and ping.msg.updates == ()
    g.received(ping.to, GossipAck(ping.msg.seq), 0.0)
    g.received(addr(9), GossipNews(wire(upd(6))), 0.1)
    assert g.next_due() == 0.0  # news is due at once
    news = [s for s in sends(g.tick(0.1)) if isinstance(s.msg, GossipNews)]
    assert len(news) == MESH.gossip_nodes == 3 and len({s.to for s in news}) == 3
    assert all(s.msg == GossipNews(wire(upd(6))) for s in news)
    assert g.next_due() == pytest.approx(0.1 + MESH.gossip_interval_s)
    # 7 members: limit 4 * ceil(log10 8) = 4 sends: 3 now, 1 more, then no news is due.
    again = [s for s in sends(g.tick(g.next_due())) if isinstance(s.msg, GossipNews)]
    assert len(again) == 1
    assert g.next_due() == MESH.probe_interval_s  # no more news due: the next probe


def test_a_load_change_is_a_new_incarnation_that_spreads_and_shows_as_changed() -> None:
    g = knowing(gossip(), 1)
    g.set_load(1, 0, 0)
    assert g.me.incarnation == 0  # unchanged: nothing to say
    g.set_load(1, 1, 3)
    assert g.me == Update("id0", "n0", addr(0), 1, State.ALIVE, "id0", 1, 1, 3)
    (piggy,) = drain(g)[:1]
    h = knowing(gossip(i=1), 0)
    assert h.received(addr(0), GossipNews(piggy), 1.0) == [Changed(g.me, State.ALIVE)]
    assert h.live() == [g.me]


def test_a_new_name_is_a_new_incarnation_that_spreads_and_shows_as_changed() -> None:
    g = knowing(gossip(), 1)
    g.set_name("n0")
    assert g.me.incarnation == 0  # the same name: nothing to say
    g.set_name("n0-2")
    assert g.me == Update("id0", "n0-2", addr(0), 1, State.ALIVE, "id0", 1, 0, 0)
    (piggy,) = drain(g)[:1]
    assert piggy == wire(g.me)
    h = knowing(gossip(i=1), 0)
    assert h.received(addr(0), GossipNews(piggy), 1.0) == [Changed(g.me, State.ALIVE)]
    assert [u.name for u in h.live()] == ["n0-2"]


def test_a_leaving_node_spreads_no_new_name() -> None:
    g = knowing(gossip(), 1)
    g.leave(0.0)
    left = g.me
    g.set_name("other")
    assert g.me == left and left.state == State.LEFT


# ---- a mesh of protocol objects over an in-memory network ----


@dataclass
class Net:
    """N Gossip objects; messages take ``latency_s`` and probes and news are lost with
    ``loss`` (a push/pull, a join's, is not: over TCP the node retries it until it is
    answered); a frozen node neither ticks nor hears. Every send passes through the codec."""

    n: int
    loss: float = 0.0
    seed: int = 1
    latency_s: float = 0.001
    # Epidemic news reaches everyone only with high probability; as in memberlist, the
    # periodic push/pull makes sure (a miss in a thousand pairs shows at N = 40).
    cfg: GossipConfig = SIM
    now: float = 0.0
    nodes: dict[str, Gossip] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    queue: list[tuple[float, int, str, str, bytes]] = field(default_factory=list)
    due: dict[str, float] = field(default_factory=dict)
    sent: list[tuple[float, str, str]] = field(default_factory=list)  # (when, sender, kind)
    changes: list[tuple[float, str, Changed]] = field(default_factory=list)
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for i in range(self.n):
            g = Gossip(f"id{i}", f"n{i}", addr(i), now=0.0, rng=random.Random(self.seed * 1000 + i),
                       config=self.cfg, workers=1)  # fmt: skip
            self.nodes[addr(i)] = g
            self.apply(addr(i), g.join([addr(0)], 0.0) if i else [])

    def apply(self, at: str, out: list[Instruction]) -> None:
        for x in out:
            if isinstance(x, Changed):
                self.changes.append((self.now, at, x))
                continue
            self.sent.append((self.now, at, type(x.msg).__name__))
            if isinstance(x.msg, GossipSync) or self.rng.random() >= self.loss:
                self.counter += 1
                heapq.heappush(
                    self.queue, (self.now + self.latency_s, self.counter, at, x.to, encode(x.msg))
                )
        self.due[at] = self.nodes[at].next_due()

    def run_until(self, end: float) -> None:
        while True:
            live = [(d, a) for a, d in self.due.items() if a not in self.frozen]
            t_tick, who = min(live)
            t_msg = self.queue[0][0] if self.queue else math.inf
            if min(t_tick, t_msg) > end:
                self.now = end
                return
            if t_msg <= t_tick:
                self.now, _, origin, to, data = heapq.heappop(self.queue)
                if to not in self.frozen:
                    self.apply(to, self.nodes[to].received(origin, decode(data), self.now))
            else:  # something due in the past (news queued since) is due now
                self.now = max(self.now, t_tick)
                self.apply(who, self.nodes[who].tick(self.now))

    def views(self) -> dict[str, set[str]]:
        return {
            a: {u.node_id for u in g.live()} for a, g in self.nodes.items() if a not in self.frozen
        }


def test_a_lossy_mesh_converges_and_a_frozen_member_is_declared_dead_by_all_within_the_bound() -> (
    None
):
    net = Net(20, loss=0.05)
    net.run_until(20.0)
    everyone = {f"id{i}" for i in range(20)}
    assert all(view == everyone - {net.nodes[a].me.node_id} for a, view in net.views().items())
    frozen = addr(7)
    net.frozen.add(frozen)
    t_freeze = net.now
    net.run_until(t_freeze + 30.0)
    deaths = {
        at: t
        for t, at, c in net.changes
        if c.member.node_id == "id7" and c.member.state == State.DEAD
    }
    assert set(deaths) == set(net.nodes) - {frozen}  # every live member, once each
    # Bound: a probe of it fails (the period it is first probed, and that period), then
    # the longest suspicion at N = 20 (no confirmations), then the dead news spreads.
    cfg = net.cfg
    max_suspicion_s = (
        cfg.suspicion_max_mult * cfg.suspicion_mult * math.log10(20) * cfg.probe_interval_s
    )
    bound = 3 * cfg.probe_interval_s + max_suspicion_s + 1.0
    assert max(deaths.values()) - t_freeze <= bound, (max(deaths.values()) - t_freeze, bound)
    # Nobody else was ever declared dead or suspected for long: loss 5 % is refuted.
    assert all(
        view == everyone - {"id7", net.nodes[a].me.node_id} for a, view in net.views().items()
    )
    assert not [
        c for _, _, c in net.changes if c.member.state == State.DEAD and c.member.node_id != "id7"
    ]


def test_a_frozen_member_that_comes_back_refutes_and_is_alive_everywhere_again() -> None:
    net = Net(8, cfg=GossipConfig(push_pull_interval_s=5.0))
    net.run_until(5.0)
    net.frozen.add(addr(3))
    net.run_until(20.0)
    assert all("id3" not in v for v in net.views().values())
    net.frozen.discard(addr(3))
    net.due[addr(3)] = net.nodes[addr(3)].next_due()
    net.run_until(40.0)  # a push/pull tells it it was dead: it refutes, and is back
    assert all("id3" in v for a, v in net.views().items() if a != addr(3))
    assert net.nodes[addr(3)].me.incarnation >= 1


@pytest.mark.parametrize("n", [10, 40])
def test_with_no_news_each_node_sends_one_ping_and_one_ack_per_period_whatever_n(n: int) -> None:
    net = Net(n)
    net.run_until(31.0)  # converged (push/pull at 15 and 30 s), every update spread
    assert all(len(v) == n - 1 for v in net.views().values())
    start, periods = net.now, 20  # until 41 s: no push/pull (the next is at 45 s)
    window_s = periods * net.cfg.probe_interval_s
    net.run_until(start + window_s + 1.0)
    kinds = Counter(kind for t, _, kind in net.sent if start <= t < start + window_s)
    pings = Counter(
        who for t, who, kind in net.sent if start <= t < start + window_s and kind == "GossipPing"
    )
    assert pings == {a: periods for a in net.nodes}  # exactly one probe per node and period
    acks = sum(1 for t, _, k in net.sent if k == "GossipAck"
               and start + net.latency_s <= t < start + window_s + net.latency_s)  # fmt: skip
    assert acks == n * periods
    assert set(kinds) == {"GossipPing", "GossipAck"}  # no ping-req, news or sync
    assert (n * periods + acks) / n / periods == 2.0
