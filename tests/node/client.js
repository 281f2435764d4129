// A WebSocket client on the ws library for sockcat's tests: connects to URL, sends each argument after the
// URL as one message (binary unless it starts with "text:"), then closes with code 1000, and prints every
// message received as one JSON line {"binary": bool, "data": "<base64>"} and finally {"close": code}.
"use strict";
const WebSocket = require("ws");
const [url, ...messages] = process.argv.slice(2);
const headers = {};
if (process.env.WS_ORIGIN) headers.Origin = process.env.WS_ORIGIN;
const ws = new WebSocket(url, { headers, perMessageDeflate: process.env.WS_DEFLATE === "1" });
ws.on("open", () => {
  for (const m of messages) {
    if (m.startsWith("text:")) ws.send(m.slice(5));
    else ws.send(Buffer.from(m), { binary: true });
  }
  ws.close(1000);
});
ws.on("message", (data, isBinary) => {
  console.log(JSON.stringify({ binary: isBinary, data: Buffer.from(data).toString("base64") }));
});
ws.on("unexpected-response", (req, res) => {
  console.log(JSON.stringify({ status: res.statusCode }));
  process.exit(0);
});
ws.on("close", (code) => {
  console.log(JSON.stringify({ close: code }));
  process.exit(0);
});
ws.on("error", (err) => {
  console.log(JSON.stringify({ error: String(err.message) }));
  process.exit(1);
});
