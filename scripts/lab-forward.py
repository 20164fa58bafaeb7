#!/usr/bin/env python3
"""Forward local ports to ports on a lab host's loopback, through `docker exec`.

    scripts/lab-forward.py paycore-ledger1 9090 9093

Prometheus and Alertmanager listen only on the lab host's loopback and its
WireGuard address (the firewall denies everything else), so a browser on this
machine cannot reach them directly. This listens on 127.0.0.1:<port> here and
relays each connection to 127.0.0.1:<port> inside the container over a
`docker exec` pipe, like `kubectl port-forward`: no port is opened in the lab.
"""

from __future__ import annotations

import asyncio
import sys

# Runs inside the lab host (python3 is in the lab image): pipes stdin/stdout
# to a TCP connection on its loopback.
RELAY = """
import socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while data := sys.stdin.buffer.read1(65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


async def pipe(reader: asyncio.StreamReader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        writer.close()


async def relay(container: str, port: int, client_r, client_w) -> None:
    command = ["docker", "exec", "-i", container, "python3", "-c", RELAY, str(port)]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.gather(pipe(client_r, proc.stdin), pipe(proc.stdout, client_w))
    await proc.wait()


async def main(container: str, ports: list[int]) -> None:
    servers = []
    for port in ports:
        servers.append(
            await asyncio.start_server(
                lambda r, w, port=port: relay(container, port, r, w), "127.0.0.1", port
            )
        )
        print(f"http://127.0.0.1:{port} -> {container} 127.0.0.1:{port}", flush=True)
    print("forwarding; Ctrl-C to stop", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    if len(sys.argv) < 3 or not all(arg.isdigit() for arg in sys.argv[2:]):
        sys.exit(f"usage: {sys.argv[0]} CONTAINER PORT [PORT ...]")
    try:
        asyncio.run(main(sys.argv[1], [int(arg) for arg in sys.argv[2:]]))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        sys.exit(f"lab-forward: {exc.strerror or exc}")
