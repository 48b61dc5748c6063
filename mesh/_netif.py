"""Which local IPv4 address to use by default: the default-route interface's (Linux)."""

from __future__ import annotations

import fcntl
import socket
import struct
from typing import NamedTuple

__all__ = ["DefaultRoute", "default_route", "default_route_ipv4"]

_SIOCGIFADDR = 0x8915


class DefaultRoute(NamedTuple):
    """The default-route interface's IPv4 address, or (``address`` None) why there is
    none, in words a user can act on."""

    address: str | None
    problem: str = ""


def _interface_ipv4(ifname: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(
                s.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname[:15].encode())
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def default_route(route_table: str = "/proc/net/route") -> DefaultRoute:
    """The IPv4 address of the interface holding the default route, or why there is none.

    Reads the kernel's routing table; sends nothing on the network.
    """
    try:
        with open(route_table, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError as exc:
        return DefaultRoute(None, f"cannot read the routing table {route_table} "
                                  f"({exc.strerror or exc})")  # fmt: skip
    holders: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            addr = _interface_ipv4(fields[0])
            if addr:
                return DefaultRoute(addr)
            holders.append(fields[0])
    if holders:
        names = ", ".join(dict.fromkeys(holders))
        return DefaultRoute(None, f"the default route's interface ({names}) has no IPv4 address")
    return DefaultRoute(None, "this machine has no IPv4 default route")


def default_route_ipv4(route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 address of the interface holding the default route, or None."""
    return default_route(route_table).address
