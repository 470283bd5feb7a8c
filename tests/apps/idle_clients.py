"""Open N keep-alive connections to HOST:PORT, send one GET on each, read the answers, print
"held N" and keep them all open until stdin closes. Used by `cargo xtask bench` (memory at scale).
"""
import asyncio
import resource
import sys


async def one(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return writer


async def main(host, port, n, path):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
    writers = []
    for start in range(0, n, 500):
        writers += await asyncio.gather(*(one(host, port, path) for _ in range(start, min(n, start + 500))))
    print("held", len(writers), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
