// Evaluated once in a traced Node.js process through its inspector (`--node-inject`; see
// runtime/node.rs). Node's async ids do not survive `await` without hooks, so the request an
// outbound call serves is only known in JavaScript: an AsyncLocalStorage holds the inbound
// request (its socket and response) for the whole of its handling, and an outbound HTTP
// request (`http.ClientRequest`) takes the store current when its code first writes or ends
// it. When such a request's bytes are written to its socket, one 16-byte marker goes first
// to the agent's marker sink over loopback TCP: "TRCN", the inbound fd, the outbound fd and
// the bytes about to be written (u32 little-endian each). The data probes see the marker's
// write and, right after it on the same thread, the outbound write itself; the agent ties
// that one write to the request in flight on the inbound connection.
// Nothing is marked unless that answer is certain: the inbound socket still open, its
// response not yet ended (work after the response is left unmarked), no second request
// pipelined on it, both writes going out at once (nothing queued on either handle), the
// sink connected. Other writes (databases, other protocols) are never marked. An unmarked
// call gets no parent, never another request's. Bodies and headers never leave the process;
// only two fds and a length do. __TRACEO_SINK_PORT__ is replaced by the agent.
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
  const MAGIC = Buffer.from("TRCN");
  const kStore = Symbol("traceo.store");
  const kInFlight = Symbol("traceo.inFlight");

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

  // An outbound request belongs to the inbound one its code runs for when it first writes.
  for (const method of ["write", "end"]) {
    const inherited = http.ClientRequest.prototype[method];
    http.ClientRequest.prototype[method] = function () {
      if (this[kStore] === undefined) this[kStore] = als.getStore() || null;
      return inherited.apply(this, arguments);
    };
  }

  const byteLength = (writev, data, encoding) => {
    if (!writev) return Buffer.isBuffer(data) ? data.length : Buffer.byteLength(data, encoding);
    let n = 0;
    for (const item of data) {
      const chunk = item && item.chunk !== undefined ? item.chunk : item;
      n += Buffer.isBuffer(chunk) ? chunk.length : Buffer.byteLength(chunk, (item && item.encoding) || encoding);
    }
    return n;
  };

  // The inbound fd the outbound request's bytes on `socket` serve, or -1 when not certain.
  const inboundFd = (socket) => {
    const req = socket._httpMessage;
    const store = req instanceof http.ClientRequest ? req[kStore] : undefined;
    if (!store) return -1;
    const inbound = store.socket;
    const handle = inbound._handle;
    if (!handle || inbound.destroyed || handle.fd < 0 || store.res.writableEnded || inbound[kInFlight] !== 1) return -1;
    return handle.fd;
  };

  const writeGeneric = net.Socket.prototype._writeGeneric;
  net.Socket.prototype._writeGeneric = function (writev, data, encoding, cb) {
    try {
      const handle = this._handle;
      const sink = state.sink;
      const inFd = this._httpMessage && this !== sink && !this.connecting && handle && handle.fd >= 0 ? inboundFd(this) : -1;
      if (inFd >= 0 && inFd !== handle.fd) {
        // Both writes go out now, in this order, only with nothing queued on either handle
        // (libuv then writes at once, inside this call).
        if (state.ready && sink.writableLength === 0 && !sink._handle.writeQueueSize && !handle.writeQueueSize) {
          const b = Buffer.allocUnsafe(16);
          MAGIC.copy(b, 0);
          b.writeUInt32LE(inFd >>> 0, 4);
          b.writeUInt32LE(handle.fd >>> 0, 8);
          b.writeUInt32LE(byteLength(writev, data, encoding) >>> 0, 12);
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
    Server.prototype.emit = function (event, req, res) {
      const socket = event === "request" && res && req && req.socket;
      if (socket && socket._handle) {
        // Requests of this connection still answering (more than one: pipelined).
        socket[kInFlight] = (socket[kInFlight] || 0) + 1;
        let done = false;
        const finished = () => {
          if (!done) {
            done = true;
            socket[kInFlight]--;
          }
        };
        res.once("finish", finished);
        res.once("close", finished);
        return als.run({ socket, res }, () => emit.apply(this, arguments));
      }
      return emit.apply(this, arguments);
    };
  }
  return "injected";
})()
