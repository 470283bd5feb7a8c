"""The OpenSSL probe cost probe: a client and a server ssl.SSLObject over memory BIOs in one
process. Usage: ssl_loop.py CERT KEY ITERATIONS BATCHES. Handshakes, prints "ready", waits for
a line on stdin, then times BATCHES batches of ITERATIONS client.write (SSL_write_ex) + server
read (SSL_read_ex) of 64 bytes and prints the median nanoseconds per pair. Used by
`cargo xtask bench`; Python's share of a pair is the same with or without the agent.
"""
import ssl
import statistics
import sys
import time

PAYLOAD = b"x" * 64


def handshake(client, server, c_in, c_out, s_in, s_out):
    done = {client: False, server: False}
    while not all(done.values()):
        for side in (client, server):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())


def batch(client, server, c_out, s_in, n):
    write, read, pull, push = client.write, server.read, c_out.read, s_in.write
    start = time.perf_counter_ns()
    for _ in range(n):
        write(PAYLOAD)
        push(pull())
        read(64)
    return (time.perf_counter_ns() - start) / n


def main(cert, key, iterations, batches):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    handshake(client, server, c_in, c_out, s_in, s_out)
    print("ready", flush=True)
    sys.stdin.readline()
    # Warm up (and let the agent see the process once) before timing.
    batch(client, server, c_out, s_in, 1000)
    ns = [batch(client, server, c_out, s_in, iterations) for _ in range(batches)]
    print(f"{statistics.median(ns):.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
