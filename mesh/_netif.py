"""Which local IPv4 address to use by default: the default-route interface's (Linux)."""

from __future__ import annotations

import fcntl
import socket
import struct

__all__ = ["default_route_ipv4"]

_SIOCGIFADDR = 0x8915


def _interface_ipv4(ifname: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(
                s.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname[:15].encode())
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def default_route_ipv4(route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 address of the interface holding the default route, or None.

    Reads the kernel's routing table; sends nothing on the network.
    """
    try:
        with open(route_table, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            addr = _interface_ipv4(fields[0])
            if addr:
                return addr
    return None
