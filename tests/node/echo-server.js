// A minimal WebSocket echo server on the ws library (with bufferutil), the reference peer of sockcat's tests
// and of bench/ws_echo.py. Prints "listening on PORT" once bound; echoes every message as it came (text stays
// text); with --close-after-first, it ends each connection with a Close once the first message is echoed.
"use strict";
const { WebSocketServer } = require("ws");
const port = Number(process.argv[2] || 0);
const closeAfterFirst = process.argv.includes("--close-after-first");
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false, maxPayload: 64 << 20 });
wss.on("listening", () => console.log(`listening on ${wss.address().port}`));
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    ws.send(data, { binary: isBinary });
    if (closeAfterFirst) ws.close(1000, "done");
  });
  ws.on("error", () => {});
});
process.on("SIGTERM", () => process.exit(0));
