"""Containers never reach the host's own services, whatever their network policy: the API,
Ray's GCS and agents and SSH all listen on host addresses. Real Docker, real iptables, a real
server on the host and one on "another machine" (a network namespace routed from the host)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from core.specs import EnvironmentSpec
from sandboxes import SandboxError, docker_available

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers"),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("iptables"), reason="needs root and iptables"
    ),
]

PROBE = """
import socket, sys
for target in sys.argv[1:]:
    ip, port = target.rsplit(":", 1)
    try:
        socket.create_connection((ip, int(port)), timeout=3).close()
        print(target, "open")
    except OSError as exc:
        print(target, type(exc).__name__)
"""


@pytest.fixture(scope="module", autouse=True)
def base_image() -> str:
    from sandboxes.images import ensure_base_image

    return ensure_base_image()


@contextlib.asynccontextmanager
async def running(env: EnvironmentSpec) -> AsyncIterator[Any]:
    from sandboxes.docker import DockerSandbox

    sandbox = DockerSandbox(env, name="net-test")
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.close()


async def probe(sandbox: Any, targets: list[str]) -> dict[str, str]:
    """What a command in the sandbox gets when it connects to each ``ip:port``."""
    await sandbox.write_file("probe.py", PROBE.encode())
    res = await sandbox.exec(f"python3 probe.py {' '.join(targets)}", timeout_s=60)
    assert res.exit_code == 0, res.stderr
    return dict(line.split(" ", 1) for line in res.stdout.splitlines())


def fleet_network(kind: str) -> tuple[str, str]:
    """The gateway (the host's address) and host interface of a fleet network."""
    from sandboxes import images, network

    cli = images.client()
    try:
        net = network.ensure_network(cli, kind)
        return network.gateway(net), network.bridge_interface(net)
    finally:
        cli.close()


def host_addresses() -> list[str]:
    """Every IPv4 address of the host but loopback."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    found = [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]
    return [ip for ip in found if not ip.startswith("127.")]


@contextlib.contextmanager
def tcp_server(address: str) -> Iterator[int]:
    """A TCP server on ``address`` that accepts and closes; yields its port."""
    server = socket.create_server((address, 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def test_full_network_reaches_outside_but_never_the_host(
    host_server: int, outside_server: str
) -> None:
    from sandboxes import network

    gw, interface = fleet_network("full")
    with tcp_server(gw) as gw_port:
        # Control: both servers answer the host itself.
        socket.create_connection((gw, gw_port), timeout=3).close()
        socket.create_connection((gw, host_server), timeout=3).close()
        host_targets = [f"{gw}:{gw_port}"] + [f"{ip}:{host_server}" for ip in host_addresses()]
        assert "172.17.0.1" in {t.split(":")[0] for t in host_targets}  # docker0 among them

        async def go() -> tuple[dict[str, str], str]:
            async with running(EnvironmentSpec(network="full")) as sb:
                seen = await probe(sb, [f"{outside_server}:8080", *host_targets])
                inet6 = (await sb.exec("cat /proc/net/if_inet6")).stdout
                return seen, inet6

        seen, inet6 = asyncio.run(go())
    assert seen.pop(f"{outside_server}:8080") == "open"  # the network itself works
    assert seen == {target: "ConnectionRefusedError" for target in host_targets}
    assert inet6 == ""  # no IPv6: nothing to reach the host over that the rules miss
    rules = subprocess.run(["iptables", "-S", network.HOST_CHAIN], capture_output=True, text=True)
    assert f"-A {network.HOST_CHAIN} -i {interface} -j REJECT" in rules.stdout
    inputs = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    assert f"-A INPUT -j {network.HOST_CHAIN}" in inputs.stdout


def test_an_allow_list_naming_the_host_still_does_not_reach_it(
    host_server: int, outside_server: str
) -> None:
    gw, _ = fleet_network("egress")

    async def go() -> dict[str, str]:
        async with running(EnvironmentSpec(network=[outside_server, gw])) as sb:
            return await probe(sb, [f"{outside_server}:8080", f"{gw}:{host_server}"])

    seen = asyncio.run(go())
    assert seen == {
        f"{outside_server}:8080": "open",
        f"{gw}:{host_server}": "ConnectionRefusedError",
    }


def test_no_iptables_means_no_networked_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxes import images, network
    from sandboxes.docker import DockerSandbox

    real_which = shutil.which
    monkeypatch.setattr(
        network.shutil,
        "which",
        lambda name, *a, **k: None if name == "iptables" else real_which(name, *a, **k),
    )
    sandbox = DockerSandbox(EnvironmentSpec(network="full"), name="no-iptables")
    with pytest.raises(SandboxError, match="needs iptables on the host"):
        asyncio.run(sandbox.start())
    cli = images.client()
    try:
        assert cli.api.containers(all=True, filters={"name": sandbox.container_name}) == []
    finally:
        cli.close()

    async def offline() -> str:  # network "none" needs no iptables
        async with running(EnvironmentSpec()) as sb:
            return (await sb.exec("echo ok")).stdout

    assert asyncio.run(offline()) == "ok\n"


def test_bridge_interface_of_named_and_older_unnamed_networks() -> None:
    from sandboxes import images, network

    cli = images.client()
    made = []
    try:
        name = f"fleet-test-{uuid.uuid4().hex[:6]}"
        old = cli.networks.create(name, driver="bridge")  # as networks were made before
        made.append(old)
        iface = network.bridge_interface(cli.networks.get(old.id))
        assert iface == f"br-{old.id[:12]}"
        named = cli.networks.create(
            name + "-n",
            driver="bridge",
            options={network.BRIDGE_NAME_OPTION: "fleet-t-" + name[-6:]},
        )
        made.append(named)
        assert network.bridge_interface(cli.networks.get(named.id)) == "fleet-t-" + name[-6:]
    finally:
        for net in made:
            with contextlib.suppress(Exception):
                net.remove()
        cli.close()
