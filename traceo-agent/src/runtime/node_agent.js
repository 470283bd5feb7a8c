// Evaluated once in a traced Node.js process through its inspector (`--node-inject`; see
// runtime/node.rs). Node's async ids do not survive `await` without hooks, so the request an
// outbound call serves is only known in JavaScript: an AsyncLocalStorage holds the inbound
// socket's fd for the whole of each request's handling. Before an outbound socket write made
// while a request is handled, one 16-byte marker goes to the agent's marker sink over
// loopback TCP: "TRACEOND", the inbound fd and the outbound fd (u32 little-endian each).
// The data probes see the marker's write and, right after it on the same thread, the
// outbound write itself; the agent ties that one write to the inbound connection's request.
// A write that cannot be marked at once (sink not connected, data queued) is left unmarked:
// its call then gets no parent, never another request's. Bodies and headers never leave the
// process; only the two fds do. __TRACEO_SINK_PORT__ is replaced by the agent.
(() => {
  const load = typeof require === "function" ? require : process.mainModule && process.mainModule.require.bind(process.mainModule);
  if (!load) return "no require";
  if (globalThis.__traceoNode) {
    // Injected by an earlier agent run: markers go to this run's sink from now on.
    globalThis.__traceoNode.connect(__TRACEO_SINK_PORT__);
    return "already injected";
  }
  const { AsyncLocalStorage } = load("async_hooks");
  const net = load("net");
  const http = load("http");
  const https = load("https");
  const als = new AsyncLocalStorage();
  const state = { sink: null, ready: false, marked: 0, unmarked: 0 };
  globalThis.__traceoNode = state;
  const MAGIC = Buffer.from("TRACEOND");

  state.connect = (port) => {
    if (state.sink) state.sink.destroy();
    state.ready = false;
    const sink = net.connect(port, "127.0.0.1");
    sink.setNoDelay(true);
    sink.on("connect", () => { state.ready = state.sink === sink; });
    sink.on("error", () => {});
    sink.on("close", () => { if (state.sink === sink) state.ready = false; });
    sink.on("data", () => {});
    sink.unref();
    state.sink = sink;
  };
  state.connect(__TRACEO_SINK_PORT__);

  const writeGeneric = net.Socket.prototype._writeGeneric;
  net.Socket.prototype._writeGeneric = function (writev, data, encoding, cb) {
    try {
      const store = als.getStore();
      const handle = this._handle;
      const sink = state.sink;
      if (store !== undefined && this !== sink && !this.server && !this.connecting && handle && handle.fd >= 0 && handle.fd !== store.fd) {
        // Marked only when both writes go out now, in this order: nothing queued on either
        // handle (libuv then writes at once, inside this call).
        if (state.ready && sink.writableLength === 0 && !sink._handle.writeQueueSize && !handle.writeQueueSize) {
          const b = Buffer.allocUnsafe(16);
          MAGIC.copy(b, 0);
          b.writeUInt32LE(store.fd >>> 0, 8);
          b.writeUInt32LE(handle.fd >>> 0, 12);
          sink.write(b);
          state.marked++;
        } else {
          state.unmarked++;
        }
      }
    } catch (_) {
      state.unmarked++;
    }
    return writeGeneric.call(this, writev, data, encoding, cb);
  };

  for (const Server of [http.Server, https.Server]) {
    const emit = Server.prototype.emit;
    Server.prototype.emit = function (event, req) {
      const handle = event === "request" && req && req.socket && req.socket._handle;
      if (handle && handle.fd >= 0) {
        return als.run({ fd: handle.fd }, () => emit.apply(this, arguments));
      }
      return emit.apply(this, arguments);
    };
  }
  return "injected";
})()
