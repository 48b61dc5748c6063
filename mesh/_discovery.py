"""Zero-config discovery: nodes advertise ``_lanmesh._tcp.local.``, clients browse for it.

The TXT record carries the node's id, name, protocol version, port, cores, workers
and its mesh id: a random id stored beside the secret file, never anything derived
from the secret, so an advert gives no way to test a guess of the secret. A browser
trusts adverts of its own mesh id at once; for any other id it authenticates to the
node once (a probe, in parallel with the rest) and, when that works, trusts that id
too: so a client with only ``MESH_SECRET`` still finds its mesh, and meshes with
different secrets on one LAN ignore each other. It says nothing about load or liveness: mDNS
records linger, so liveness is the TCP connection's business. Interfaces are always
explicit: tests and demos pin 127.0.0.1 (``MESH_INTERFACES``); loopback and container
bridges are never chosen by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mesh._auth import mesh_id
from mesh._connection import open_connection
from mesh._netif import default_route
from mesh._protocol import PROTOCOL_VERSION
from mesh._tasks import TaskSet
from mesh.errors import AuthenticationError, ConfigurationError, MeshError

__all__ = [
    "DEFAULT_PORT",
    "SERVICE",
    "Advert",
    "Advertiser",
    "Browser",
    "discover",
    "interfaces_from_env",
    "no_interface_reason",
    "parse_peers",
    "peers_from_env",
]

log = logging.getLogger("mesh.discovery")

SERVICE = "_lanmesh._tcp.local."
TXT_MAX = 200
PROBE_TIMEOUT_S = 2.0  # a node of another id must complete a handshake in this time
DEFAULT_PORT = 7390


def interfaces_from_env() -> list[str]:
    """``MESH_INTERFACES``: comma-separated IPv4 addresses to pin discovery to."""
    out = []
    for item in os.environ.get("MESH_INTERFACES", "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            ipaddress.IPv4Address(item)
        except ValueError:
            raise ConfigurationError(f"MESH_INTERFACES: {item!r} is not an IPv4 address") from None
        out.append(item)
    return out


def parse_peers(peers: str | Iterable[str], *, strict: bool = True) -> list[tuple[str, int]]:
    """``"h1:7390,h2"`` or ``["h1:7390", "h2"]`` -> [(host, port)]; port defaults to 7390.

    ``strict=False`` (addresses a node sent) skips bad items and accepts none at all.
    """
    items = peers.split(",") if isinstance(peers, str) else list(peers)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, str(DEFAULT_PORT)
        try:
            out.append((host.strip("[]"), int(port)))
        except ValueError:
            if strict:
                raise ConfigurationError(f"bad peer address {item!r}: expected HOST:PORT") from None
    if not out and strict:
        raise ConfigurationError("no peer addresses given")
    return out


def peers_from_env() -> list[tuple[str, int]]:
    """``MESH_PEERS``: nodes to connect to without multicast (clients and nodes alike)."""
    value = os.environ.get("MESH_PEERS", "").strip()
    return parse_peers(value) if value else []


@dataclass(frozen=True)
class Advert:
    """What a node tells the LAN about itself."""

    node_id: str
    name: str
    host: str
    port: int
    workers: int
    cpus: int
    mesh_id: str
    protocol: int = PROTOCOL_VERSION

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def properties(self) -> dict[str, str]:
        props = {
            "id": self.node_id, "name": self.name[:40], "v": str(self.protocol),
            "port": str(self.port), "cpus": str(self.cpus), "w": str(self.workers),
            "mesh": self.mesh_id,
        }  # fmt: skip
        size = sum(len(k) + len(v) + 2 for k, v in props.items())
        if size > TXT_MAX:
            raise ConfigurationError(f"TXT record of {size} bytes exceeds {TXT_MAX}")
        return props

    @classmethod
    def from_record(cls, host: str, port: int, props: dict[bytes, bytes | None]) -> Advert | None:
        p = {
            k.decode(errors="replace"): (v or b"").decode(errors="replace")
            for k, v in props.items()
        }
        try:
            return cls(p["id"], p.get("name", ""), host, port, int(p.get("w", "0")),
                       int(p.get("cpus", "0")), p["mesh"], int(p["v"]))  # fmt: skip
        except (KeyError, ValueError):
            return None  # not one of ours, or from a future version we cannot read


_WHAT_TO_SET = (
    "set MESH_INTERFACES to this machine's LAN IPv4 address, or "
    "MESH_PEERS to nodes of the mesh (HOST:PORT,...), which needs no discovery"
)


def no_interface_reason() -> str:
    """Why discovery has no interface to run on, and what to set: MESH_INTERFACES is
    unset and the default-route interface (what discovery uses then) gives no address."""
    route = default_route()
    why = route.problem or "no interface was given"
    return f"discovery could not run: MESH_INTERFACES is unset and {why}; {_WHAT_TO_SET}"


def _zeroconf(interfaces: list[str]) -> Any:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    if not interfaces:
        raise ConfigurationError(no_interface_reason())
    try:
        return AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    except OSError as exc:  # an address that is not this machine's, say
        raise ConfigurationError(
            f"discovery could not run on {', '.join(interfaces)}: {exc.strerror or exc} "
            f"(is that an IPv4 address of this machine?); {_WHAT_TO_SET}"
        ) from exc


class Advertiser:
    """Registers one node on the given interfaces; ``close()`` sends the goodbyes."""

    def __init__(self, advert: Advert, interfaces: list[str]) -> None:
        self.advert = advert
        self.interfaces = interfaces
        self._azc: Any = None
        self._info: Any = None

    async def start(self) -> None:
        """Probe for the name (a collision raises), then announce."""
        from zeroconf import NonUniqueNameException
        from zeroconf.asyncio import AsyncServiceInfo

        self._azc = _zeroconf(self.interfaces)
        a = self.advert
        self._info = AsyncServiceInfo(
            SERVICE,
            f"{a.node_id}.{SERVICE}",
            addresses=[socket.inet_aton(a.host)],
            port=a.port,
            properties=a.properties(),
            server=f"{a.node_id}.local.",
        )
        try:
            await (await self._azc.async_register_service(self._info))
        except NonUniqueNameException:
            await self.close()
            raise ConfigurationError(
                f"another node already advertises the name {a.node_id} on this LAN"
            ) from None

    async def close(self) -> None:
        if self._azc is not None:
            azc, self._azc = self._azc, None
            try:
                await azc.async_unregister_all_services()
            finally:
                await azc.async_close()


class Browser:
    """Finds the nodes of one mesh and keeps watching: ``on_found`` hears of each new one.

    Adverts of this process's mesh id are reported at once; a node of another id is
    reported once a probe authenticated to it (its id is then trusted too). Nodes of
    other meshes (the probe fails) or protocols are ignored and never reported.
    """

    def __init__(
        self,
        secret: bytes,
        interfaces: list[str],
        on_found: Callable[[Advert], None] | None = None,
    ) -> None:
        self._secret = secret
        self._trusted = {mesh_id(secret)}
        self._foreign: set[str] = set()  # node ids whose probe failed its authentication
        self._probing: set[str] = set()
        self._interfaces = interfaces
        self._on_found = on_found
        self.found: dict[str, Advert] = {}
        self._azc: Any = None
        self._browser: Any = None
        self._tasks = TaskSet("discovery", log)
        self._changed = asyncio.Event()

    async def start(self) -> None:
        from zeroconf.asyncio import AsyncServiceBrowser

        self._azc = _zeroconf(self._interfaces)
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE, handlers=[self._on_change])

    def _on_change(
        self, zeroconf: object, service_type: str, name: str, state_change: object
    ) -> None:
        from zeroconf import ServiceStateChange

        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            self._tasks.spawn(self._resolve(name), f"resolve {name}")

    async def _resolve(self, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(SERVICE, name)
        if self._azc is None or not await info.async_request(self._azc.zeroconf, 1000):
            return
        addresses = info.parsed_addresses()
        if not addresses or info.port is None:
            return
        advert = Advert.from_record(addresses[0], info.port, info.properties)
        if advert is None or advert.protocol != PROTOCOL_VERSION:
            return
        key = advert.node_id
        if key in self.found or key in self._foreign or key in self._probing:
            return
        if advert.mesh_id not in self._trusted:
            self._probing.add(key)
            try:
                if not await self._probe(advert):
                    return
            finally:
                self._probing.discard(key)
            if key in self.found:
                return
        self._accept(advert)

    async def _probe(self, advert: Advert) -> bool:
        """Authenticate to a node of an unknown mesh id: True (its id is now trusted) if
        it proves our secret. A node that proves another secret is never tried again."""
        try:
            conn = await open_connection(
                advert.host, advert.port, self._secret, name="probe", timeout_s=PROBE_TIMEOUT_S
            )
        except AuthenticationError:
            self._foreign.add(advert.node_id)  # another mesh: never connect to it again
            return False
        except MeshError:
            return False  # unreachable for now: a later announcement tries again
        conn.close()
        self._trusted.add(advert.mesh_id)
        return True

    def _accept(self, advert: Advert) -> None:
        self.found[advert.node_id] = advert
        self._changed.set()
        if self._on_found is not None:
            self._on_found(advert)

    async def settle(self, window_s: float, settle_s: float = 0.25) -> None:
        """Wait until nodes were heard and none new came for ``settle_s``, or ``window_s``."""
        deadline = time.monotonic() + window_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(
                    self._changed.wait(), min(left, settle_s) if self.found else left
                )
            except asyncio.TimeoutError:
                if self.found and not self._probing:
                    return

    async def close(self) -> None:
        await self._tasks.close()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._azc is not None:
            azc, self._azc = self._azc, None
            await azc.async_close()


async def discover(
    secret: bytes,
    interfaces: list[str],
    *,
    window_s: float = 1.5,
    settle_s: float = 0.25,
) -> list[Advert]:
    """Nodes of this mesh (same secret and protocol) seen within ``window_s``.

    Returns early once nodes have been heard and no new one came for ``settle_s``.
    """
    browser = Browser(secret, interfaces)
    await browser.start()
    try:
        await browser.settle(window_s, settle_s)
    finally:
        await browser.close()
    return sorted(browser.found.values(), key=lambda a: a.name)
