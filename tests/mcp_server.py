"""A real MCP server for the tests, written with the ``mcp`` package (``MCPServer``).

``python mcp_server.py`` serves over stdio; ``python mcp_server.py http PORT`` over
streamable HTTP on 127.0.0.1:PORT (path ``/mcp``); ``python mcp_server.py fail`` says why on
stderr and exits 1 before speaking MCP. Standalone: it is copied into sandboxes.
"""

from __future__ import annotations

import os
import socket
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("fleet-test")


@server.tool()
def echo(text: str) -> str:
    """Return the text as given."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def read_text(path: str) -> str:
    """Read a text file, relative to the server's working directory."""
    with open(path) as handle:
        return handle.read()


@server.tool()
def whereami() -> dict:
    """Where the server runs: its working directory, host name and FLEET_MCP_MARK."""
    return {
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "mark": os.environ.get("FLEET_MCP_MARK", ""),
    }


@server.tool()
def reach(host: str, port: int) -> str:
    """Try a TCP connection: 'connected' or why not."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return f"unreachable: {exc}"


@server.tool()
def crash() -> str:
    """Exit at once, mid-call, with code 3."""
    sys.stderr.write("crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


def main() -> None:
    if sys.argv[1:2] == ["fail"]:
        sys.stderr.write("cannot start: missing FLEET_TEST_CONFIG\n")
        sys.exit(1)
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()


if __name__ == "__main__":
    main()
