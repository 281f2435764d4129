// A WebSocket echo load client on the ws library (with bufferutil): CONNS connections, each with one SIZE-byte
// binary message in flight at a time, for SECONDS after a 0.5 s warm-up. Prints one JSON line:
// {"rate": round trips/s, "p50_us": …, "p99_us": …, "errors": n}. Used by bench/ws_echo.py; the ws library comes
// from tests/node (NODE_PATH).
"use strict";
const WebSocket = require("ws");
const [url, conns = "128", size = "64", seconds = "5"] = process.argv.slice(2);
const N = Number(conns), payload = Buffer.alloc(Number(size), 120), window = Number(seconds) * 1000;
const lat = [];
let counting = false, count = 0, errors = 0, open = 0;
const sockets = [];
for (let i = 0; i < N; i++) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  let sent = 0n;
  const fire = () => { sent = process.hrtime.bigint(); ws.send(payload, { binary: true }); };
  ws.on("open", () => { open += 1; fire(); });
  ws.on("message", () => {
    if (counting) { count += 1; lat.push(Number(process.hrtime.bigint() - sent) / 1000); }
    fire();
  });
  ws.on("error", () => { errors += 1; });
  sockets.push(ws);
}
setTimeout(() => {
  counting = true;
  const start = process.hrtime.bigint();
  setTimeout(() => {
    counting = false;
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    lat.sort((a, b) => a - b);
    const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null);
    console.log(JSON.stringify({ rate: count / secs, p50_us: q(0.5), p99_us: q(0.99), errors, open }));
    for (const ws of sockets) ws.terminate();
    process.exit(0);
  }, window);
}, 500);
