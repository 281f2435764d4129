// sockcat chat in a browser: the broker's line protocol (docs/chat.md) over a WebSocket to the page's own host.
// Every line from the broker is shown with textContent, never as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const log = $("log"), who = $("who");
  let ws = null, joined = false, me = "", quietWho = 0, whoTimer = null;

  function show(text, kind) {
    const li = document.createElement("li");
    if (kind) li.className = kind;
    const m = /^(<[^>]+>|\*[^*\s]+\*) (.*)$/s.exec(text);
    if (m && !kind) {
      const b = document.createElement("span");
      b.className = "who";
      b.textContent = m[1];
      li.append(b, " " + m[2]);
      if (m[1].startsWith("*")) li.className = "private";
    } else {
      li.textContent = text;
    }
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(li);
    while (log.children.length > 2000) log.firstChild.remove();
    if (atEnd) li.scrollIntoView({ block: "end" });
  }

  function askWho() {
    clearTimeout(whoTimer);
    whoTimer = setTimeout(() => {
      if (ws && ws.readyState === WebSocket.OPEN && joined) {
        quietWho += 1;
        ws.send("/who");
      }
    }, 150);
  }

  function renderWho(names) {
    who.replaceChildren(...names.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      li.title = "/msg " + n;
      li.addEventListener("click", () => { $("line").value = "/msg " + n + " "; $("line").focus(); });
      return li;
    }));
    $("count").textContent = "(" + names.length + ")";
  }

  function onLine(line) {
    const online = /^\* online \((\d+)\): (.*)$/.exec(line);
    if (online) {
      renderWho(online[2] ? online[2].split(", ") : []);
      if (quietWho > 0) { quietWho -= 1; return; }
    }
    if (!joined) {
      const hello = /^\* hello (.+?); /.exec(line);
      if (hello) {
        joined = true;
        me = hello[1];
        $("join").hidden = true;
        $("chat").hidden = false;
        $("status").textContent = "connected as " + me;
        $("line").focus();
        askWho();
      } else if (line.startsWith("! ")) {
        $("join-error").textContent = line.slice(2);
        return;
      } else if (line.includes("your name?")) {
        $("status").textContent = "connected";
        return;
      }
    } else if (/^\* .+ (joined|left|is now .+)$/.test(line)) {
      askWho();
    }
    show(line, line.startsWith("* ") ? "notice" : line.startsWith("! ") ? "error" : "");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/");
    joined = false;
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string") ev.data.split("\n").filter((l) => l !== "").forEach(onLine);
    });
    ws.addEventListener("close", () => {
      $("status").textContent = "disconnected — reload to join again";
      $("join").hidden = joined;
      joined = false;
    });
  }

  $("join").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim(), password = $("password").value;
    if (!name || !ws || ws.readyState !== WebSocket.OPEN) return;
    $("join-error").textContent = "";
    ws.send(password ? "/nick " + name + " " + password : name);
  });

  $("say").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const line = $("line").value;
    if (!line || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(line);
    if (!line.startsWith("/") || line.startsWith("//")) show("<" + me + "> " + line.replace(/^\/\//, "/"), "mine");
    else if (line.startsWith("/msg ")) show("→ " + line.slice(5), "mine");
    $("line").value = "";
  });

  connect();
})();
