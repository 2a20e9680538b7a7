"""Network policy for docker sandboxes.

- ``"none"``: no network interface but loopback (``network_mode=none``).
- ``"full"``: the ``agent-fleet-full`` bridge; containers cannot reach each other (icc off).
- a list of hostnames / IPs / CIDRs: the ``agent-fleet-egress`` bridge (icc off) plus
  per-container iptables rules in an ``AGENT-FLEET`` chain, jumped to from ``DOCKER-USER``
  (forwarded traffic) and ``INPUT`` (traffic to the host itself). Packets from the
  container's IP to an allowed address return to Docker's own rules; everything else is
  rejected. Hostnames are resolved on the host when the sandbox starts and pinned in the
  container's ``/etc/hosts``, so the container needs no DNS. Rules carry the comment
  ``agent-fleet:<container name>`` and are deleted when the sandbox closes (and by the reaper).

Whatever the policy, containers never reach the host itself: the fleet's bridges have fixed
interface names (``fleet-full``, ``fleet-egress``) and an ``AGENT-FLEET-HOST`` chain, jumped to
from ``INPUT``, rejects every connection that arrives on them (the bridge's gateway, docker0's
address, the host's own addresses, so Ray, the API, SSH). Traffic to other machines is
forwarded, not input, and stays as the policy says. The rules are (re)installed, idempotently,
each time a sandbox's network is ensured. The fleet's networks have no IPv6 (Docker then
disables it in their containers), so IPv4 rules cover them.

Needs root (or CAP_NET_ADMIN) and ``iptables`` for any policy but ``none``; without them,
starting such a sandbox fails (closed, not open).
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import socket
import subprocess
import threading
from typing import TYPE_CHECKING

from sandboxes.base import SandboxError

if TYPE_CHECKING:
    import docker

CHAIN = "AGENT-FLEET"
HOST_CHAIN = "AGENT-FLEET-HOST"
NETWORKS = {"full": "agent-fleet-full", "egress": "agent-fleet-egress"}
BRIDGES = {"full": "fleet-full", "egress": "fleet-egress"}
"""Host interface names of the fleet's bridges (at most 15 characters)."""
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
COMMENT_PREFIX = "agent-fleet:"
_lock = threading.Lock()


def ensure_network(cli: docker.DockerClient, kind: str) -> docker.models.networks.Network:
    """The shared bridge network for ``kind`` ("full" or "egress"), created on first use,
    with the host guarded from it (see ``guard_host``)."""
    net = _find_or_create(cli, kind)
    guard_host(bridge_interface(net))
    return net


def _find_or_create(cli: docker.DockerClient, kind: str) -> docker.models.networks.Network:
    import docker

    name = NETWORKS[kind]
    with _lock:
        found = cli.networks.list(names=[name])
        exact = [n for n in found if n.name == name]
        if exact:
            return exact[0]
        try:
            return cli.networks.create(
                name,
                driver="bridge",
                check_duplicate=True,
                options={
                    "com.docker.network.bridge.enable_icc": "false",
                    BRIDGE_NAME_OPTION: BRIDGES[kind],
                },
                labels={"agent-fleet": "1"},
            )
        except docker.errors.APIError:
            exact = [n for n in cli.networks.list(names=[name]) if n.name == name]
            if exact:
                return exact[0]
            raise


def bridge_interface(network: docker.models.networks.Network) -> str:
    """The host interface of a bridge network: its configured name, else Docker's default
    ``br-<id[:12]>`` (a network made before the fleet named its bridges)."""
    if not network.attrs.get("Options"):
        network.reload()
    named = (network.attrs.get("Options") or {}).get(BRIDGE_NAME_OPTION)
    return named or f"br-{network.id[:12]}"


def guard_host(interface: str) -> None:
    """Reject every new connection that arrives on ``interface`` for the host itself.

    Replies to connections the host opened pass. Installed once per interface (later calls
    only check that it is still there). Raises SandboxError when iptables is missing or
    refuses: a sandbox on that network must not start then.
    """
    with _lock:
        if _iptables("-n", "-L", HOST_CHAIN, check=False).returncode != 0:
            _iptables("-N", HOST_CHAIN, check=False)
        reject = ["-i", interface, "-j", "REJECT"]
        replies = ["-i", interface, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
        if _iptables("-C", HOST_CHAIN, *reject, check=False).returncode != 0:
            _iptables("-A", HOST_CHAIN, *reject)  # below this interface's replies rule, if any
        if _iptables("-C", HOST_CHAIN, *replies, "-j", "RETURN", check=False).returncode != 0:
            _iptables("-I", HOST_CHAIN, "1", *replies, "-j", "RETURN")
        if _iptables("-C", "INPUT", "-j", HOST_CHAIN, check=False).returncode != 0:
            _iptables("-I", "INPUT", "1", "-j", HOST_CHAIN)


def gateway(network: docker.models.networks.Network) -> str:
    """The host's address on a fleet network."""
    network.reload()
    return network.attrs["IPAM"]["Config"][0]["Gateway"]


def resolve(allowed: list[str]) -> tuple[list[str], dict[str, str]]:
    """Allowed destinations as CIDRs, and hostname -> IP for the container's /etc/hosts."""
    cidrs: list[str] = []
    hosts: dict[str, str] = {}
    for entry in allowed:
        try:
            cidrs.append(str(ipaddress.ip_network(entry, strict=False)))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SandboxError(f"allowed host {entry!r} does not resolve: {exc}") from exc
        ips = sorted({info[4][0] for info in infos})
        cidrs += [f"{ip}/32" for ip in ips]
        hosts[entry] = ips[0]
    return cidrs, hosts


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not shutil.which("iptables"):
        raise SandboxError(
            "a sandbox network policy other than 'none' needs iptables on the host (to keep "
            "containers off the host's own services and enforce allow-lists); it is not installed"
        )
    done = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SandboxError(f"iptables {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _ensure_chain() -> None:
    if _iptables("-n", "-L", CHAIN, check=False).returncode != 0:
        _iptables("-N", CHAIN, check=False)
    forward = (
        "DOCKER-USER"
        if _iptables("-n", "-L", "DOCKER-USER", check=False).returncode == 0
        else "FORWARD"
    )
    for parent in (forward, "INPUT"):
        if _iptables("-C", parent, "-j", CHAIN, check=False).returncode != 0:
            _iptables("-I", parent, "1", "-j", CHAIN)


def allow_only(container_name: str, source_ip: str, cidrs: list[str]) -> None:
    """Let ``source_ip`` reach ``cidrs`` and nothing else."""
    comment = COMMENT_PREFIX + container_name
    with _lock:
        _ensure_chain()
        # Rules a crashed run left for this (now reused) address must not apply to us.
        for parts in _rules():
            if "-s" in parts and parts[parts.index("-s") + 1] in (source_ip, f"{source_ip}/32"):
                _iptables("-D", *parts[1:], check=False)
        tag = ["-m", "comment", "--comment", comment]
        # Insert the reject first, then the accepts above it: no moment is ever open.
        _iptables("-I", CHAIN, "1", "-s", source_ip, *tag, "-j", "REJECT")
        for cidr in cidrs:
            _iptables("-I", CHAIN, "1", "-s", source_ip, "-d", cidr, *tag, "-j", "RETURN")


def _rules() -> list[list[str]]:
    """The rules of our chain, each as ``iptables -S`` arguments (``-A CHAIN ...``)."""
    listing = _iptables("-S", CHAIN, check=False)
    if listing.returncode != 0:
        return []
    return [p for p in map(shlex.split, listing.stdout.splitlines()) if p and p[0] == "-A"]


def remove_rules(container_name: str | None = None, keep: set[str] | None = None) -> int:
    """Delete the rules of one container, or (name None) of every container not in ``keep``."""
    if not shutil.which("iptables"):
        return 0
    with _lock:
        removed = 0
        for parts in _rules():
            if "--comment" not in parts:
                continue
            comment = parts[parts.index("--comment") + 1]
            if not comment.startswith(COMMENT_PREFIX):
                continue
            owner = comment[len(COMMENT_PREFIX) :]
            if container_name is not None and owner != container_name:
                continue
            if container_name is None and keep is not None and owner in keep:
                continue
            _iptables("-D", *parts[1:], check=False)
            removed += 1
        return removed
