"""Wire messages of gossip membership (tags 80-85): node <-> node, and the
Members view nodes push to clients.

Built on mesh._wire; :mod:`mesh._protocol` imports this module and re-exports its names:
import them from there (every message registers in its one registry on import).
"""

import dataclasses

from mesh._wire import (
    Message,
    message,
)

# ---- gossip membership (tags 80-89): node <-> node, see mesh/_gossip.py ----
#
# SWIM over the nodes' authenticated links: each message carries, piggybacked, the
# newest membership updates its sender is still spreading.

# A member as gossip spreads it: node id, name, address ("host:port"), incarnation,
# state (0 alive, 1 suspect, 2 dead, 3 left), origin (the node id of who said so),
# workers, running, queued.
MemberUpdate = tuple[str, str, str, int, int, str, int, int, int]


@message(80)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipPing(Message):
    """Node -> node: are you alive? ``target`` is the node id meant (an address may
    have changed hands); answered with :class:`GossipAck` of the same ``seq``."""

    seq: int
    target: str
    updates: tuple[MemberUpdate, ...] = ()


@message(81)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipAck(Message):
    """Answer to :class:`GossipPing`, also relayed for a :class:`GossipPingReq`."""

    seq: int
    updates: tuple[MemberUpdate, ...] = ()


@message(82)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipPingReq(Message):
    """Node -> node: my ping of ``target`` at ``address`` went unanswered; ping it for
    me and pass its ack back with my ``seq``."""

    seq: int
    target: str
    address: str
    updates: tuple[MemberUpdate, ...] = ()


@message(83)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipSync(Message):
    """Node -> node: every member the sender knows (push/pull: on join, and now and
    then); answered with the receiver's own, ``reply`` set, which is not answered."""

    members: tuple[MemberUpdate, ...]
    reply: bool = False


@message(84)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipNews(Message):
    """Node -> node: membership updates being spread, sent only while there are some
    (memberlist's gossip timer); not answered."""

    updates: tuple[MemberUpdate, ...]


@message(85)
@dataclasses.dataclass(frozen=True, slots=True)
class Members(Message):
    """Node -> client: what the node's gossip holds of the mesh's members. With ``full``
    (once, on connect): the sender itself first, then every live member; then each
    member that joins, is suspected, dies, leaves or comes back, as gossip learns it,
    so a client needs no heartbeats of its own to learn of joins and deaths."""

    updates: tuple[MemberUpdate, ...]
    full: bool = False
