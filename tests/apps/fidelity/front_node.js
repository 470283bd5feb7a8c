// The fidelity front on Node.js (builtin modules only): an http server calling the backend
// with http.request and a keep-alive http.Agent. GET /call?req=ID as in front_asgi.py.
// Run: node front_node.js PORT (FIDELITY_BACKEND names the backend). FIDELITY_NO_SLEEP=1 leaves
// the sleeps out (a throughput benchmark's front: `cargo xtask bench`).
"use strict";
const http = require("http");

const backend = new URL(process.env.FIDELITY_BACKEND);
const agent = new http.Agent({ keepAlive: true, maxSockets: 200 });
const noSleep = process.env.FIDELITY_NO_SLEEP === "1";
const sleep = (ms) => (noSleep ? undefined : new Promise((resolve) => setTimeout(resolve, ms)));

function leaf(req) {
  const path = `/leaf?from=${encodeURIComponent(req)}&k=0`;
  return new Promise((resolve, reject) => {
    const r = http.request({ host: backend.hostname, port: backend.port, path, agent }, (res) => {
      res.resume();
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
    });
    r.on("error", reject);
    r.end();
  });
}

const server = http.createServer(async (request, response) => {
  const url = new URL(request.url, "http://front");
  if (url.pathname !== "/call") {
    response.writeHead(404).end("not found");
    return;
  }
  const req = url.searchParams.get("req") || "";
  try {
    await sleep(Math.random() * 20);
    await leaf(req);
    await sleep(Math.random() * 10);
    response.writeHead(200, { "content-type": "text/plain" }).end(`called ${req}`);
  } catch (e) {
    response.writeHead(502).end(String(e));
  }
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.argv[2]), "127.0.0.1");
