"""Where an output may send: not into the collector's own host or the cloud's metadata service.

An output is configured by an admin over the API; left alone, it could make
the collector talk to services only the collector's host can reach (a blind
SSRF: delivery counts reveal which ports answer). So every destination is
resolved and every address it resolves to is checked; loopback, link-local
(169.254/16, fe80::/10, where metadata services live), known metadata
addresses, unspecified and multicast addresses and this host's own addresses
are refused unless the output carries ``allow_local`` (set only by
``weightwarden-collector outputs add --allow-local`` on the collector host).

The check and the connection use the same addresses: a receiver connects to
an address :func:`resolve` returned, never to the name again, so a DNS answer
that changes between the check and the connection (rebinding) changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services outside link-local (AWS IPv6, Alibaba) and the link-local ones by name.
METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host on this network": 0.0.0.0 connects to loopback


class DestinationRefused(ValueError):
    """A destination the output may not reach (or that cannot be resolved); the message says why."""


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), which is where packets really go."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def host_addresses() -> set[IPAddress]:
    """This host's own addresses (any interface): a service bound to 0.0.0.0 answers on each."""
    import psutil

    out: set[IPAddress] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(ipaddress.ip_address(a.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return out


def why_forbidden(ip: IPAddress, own: set[IPAddress] | None = None) -> str | None:
    """Why an output may not send to ``ip`` without ``allow_local``; None if it may."""
    inner = _embedded_v4(ip)
    if inner is not None:
        reason = why_forbidden(inner, own)
        return f"{reason} (as {ip})" if reason else None
    if ip in METADATA:
        return f"{ip} is a cloud metadata service"
    if ip.is_loopback:
        return f"{ip} is loopback (this host)"
    if ip.is_link_local:
        return f"{ip} is link-local (where metadata services and neighbours' management live)"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in THIS_NETWORK):
        return f"{ip} is unspecified (it reaches this host)"
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is multicast or broadcast"
    if own is not None and ip in own:
        return f"{ip} is one of this host's own addresses"
    return None


@dataclass(frozen=True)
class Target:
    """A destination as checked: the name (for TLS and Host headers) and the addresses to connect to."""

    host: str
    port: int
    addresses: tuple[str, ...]


def resolve(host: str, port: int, allow_local: bool, transport: int = socket.SOCK_STREAM) -> Target:
    """Resolve ``host`` and check every address it has; raises DestinationRefused.

    All of them, not the first: a name that resolves to a public address and to 127.0.0.1 would
    otherwise reach loopback on a retry.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=transport)
    except (OSError, UnicodeError) as exc:
        raise DestinationRefused(f"cannot resolve {host!r}: {exc}") from None
    addresses: list[str] = []
    own = None if allow_local else host_addresses()
    for _family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]
        ip = ipaddress.ip_address(text)
        if not allow_local:
            reason = why_forbidden(ip, own)
            if reason:
                raise DestinationRefused(f"{host}: {reason}; only `weightwarden-collector outputs add --allow-local` "
                                         "on the collector host allows it")
        if str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    if not addresses:
        raise DestinationRefused(f"{host!r} has no address")
    return Target(host, port, tuple(addresses))


async def resolve_async(host: str, port: int, allow_local: bool, transport: int = socket.SOCK_STREAM) -> Target:
    return await asyncio.to_thread(resolve, host, port, allow_local, transport)


def check_literal(host: str, allow_local: bool) -> None:
    """At configuration time: a literal address (or a name that resolves now) that is refused, is refused
    now, with the reason; a name that does not resolve yet is checked again at every delivery."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:
            resolve(host, 0, allow_local)
        except DestinationRefused as exc:
            if "cannot resolve" in str(exc) or "no address" in str(exc):
                return
            raise
        return
    if not allow_local:
        reason = why_forbidden(ip, host_addresses())
        if reason:
            raise DestinationRefused(f"{reason}; only `weightwarden-collector outputs add --allow-local` on the "
                                     "collector host allows it")


def connect_pinned(target: Target, timeout: float) -> socket.socket:
    """A TCP connection to one of the checked addresses (in order), never to the name again."""
    last: OSError | None = None
    for address in target.addresses:
        try:
            return socket.create_connection((address, target.port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last or OSError(f"no address of {target.host} answered")


__all__ = ["DestinationRefused", "Target", "check_literal", "connect_pinned", "host_addresses", "resolve",
           "resolve_async", "why_forbidden"]
