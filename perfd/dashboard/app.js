// perfd's live dashboard: renders MetricsSnapshot v1.0.0 frames pushed on
// /ws/system_metrics, reconnects with back-off, marks the page stale when
// frames stop, polls health for why perfd is not attached, and fetches a
// per-node flame graph from /api/profile.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const wsQuery = token ? "?token=" + encodeURIComponent(token) : "";
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/system_metrics" + wsQuery;

  const STALE_MIN_MS = 3000;
  const PROFILE_EVERY_MS = 5000;
  const HEALTH_EVERY_MS = 2000;

  const state = {
    socket: null,
    lastFrameAt: 0,
    frameGaps: [],
    frames: 0,
    reconnectDelay: 500,
    selectedNode: null,
    autoSelected: true, // the page chose the node (not a click): it may move on to one with samples
    emptyProfiles: new Set(), // auto-chosen nodes whose profile had no samples yet
    profileAt: 0,
    profileNode: null,
    snapshot: null,
  };
  window.perfdDashboard = state;

  const $ = (id) => document.getElementById(id);

  // --- formatting --------------------------------------------------------

  function fixed(value, digits) {
    return Number(value || 0).toFixed(digits);
  }
  function count(value) {
    return Number(value || 0).toLocaleString("en-US");
  }
  function bytes(value) {
    let v = Number(value || 0);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i ? v.toFixed(1) : String(Math.round(v))) + " " + units[i];
  }
  function shortId(id) {
    return id.length > 12 ? id.slice(0, 8) + "…" : id;
  }
  function nodeLabel(nodeId) {
    const nodes = (state.snapshot && state.snapshot.dag && state.snapshot.dag.nodes) || [];
    const node = nodes.find((n) => n.node_id === nodeId);
    return node && node.node_name !== nodeId ? `${node.node_name} (${shortId(nodeId)})` : nodeId;
  }
  function td(text, field, cls) {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (field) cell.dataset.field = field;
    if (cls) cell.className = cls;
    return cell;
  }
  function fillTable(table, rows) {
    const body = table.tBodies[0];
    body.replaceChildren(...rows);
  }

  // --- connection state ----------------------------------------------------

  function setConnection(kind, text) {
    const badge = $("connection");
    badge.dataset.state = kind;
    badge.textContent = text;
    document.body.classList.toggle("stale", kind === "stale" || kind === "reconnecting");
  }

  function staleAfter() {
    // three missed frames at the observed rate, never less than 3 s
    const gaps = state.frameGaps;
    const typical = gaps.length ? gaps.reduce((a, b) => a + b, 0) / gaps.length : 1000;
    return Math.max(STALE_MIN_MS, 3 * typical);
  }

  function checkStale() {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    if (!state.lastFrameAt) return;
    const age = Date.now() - state.lastFrameAt;
    if (age > staleAfter()) setConnection("stale", `stale · last update ${Math.round(age / 1000)} s ago`);
  }

  function connect() {
    setConnection(state.frames ? "reconnecting" : "connecting", state.frames ? "reconnecting…" : "connecting…");
    let socket;
    try {
      socket = new WebSocket(wsUrl);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.socket = socket;
    socket.onopen = () => {
      state.reconnectDelay = 500;
      setConnection("waiting", "connected · waiting for data");
    };
    socket.onmessage = (event) => {
      const now = Date.now();
      if (state.lastFrameAt) {
        state.frameGaps.push(now - state.lastFrameAt);
        if (state.frameGaps.length > 10) state.frameGaps.shift();
      }
      state.lastFrameAt = now;
      state.frames++;
      let snap;
      try {
        snap = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      setConnection("live", "live");
      render(snap);
    };
    socket.onclose = () => {
      if (state.socket === socket) {
        state.socket = null;
        scheduleReconnect();
      }
    };
    socket.onerror = () => socket.close();
  }

  function scheduleReconnect() {
    setConnection("reconnecting", `disconnected · retrying in ${(state.reconnectDelay / 1000).toFixed(1)} s`);
    setTimeout(connect, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, 8000);
  }

  // --- rendering -------------------------------------------------------------

  function render(snap) {
    state.snapshot = snap;
    renderSystem(snap.system || {});
    renderNodes(snap.dag || {});
    renderTopics(snap.websocket || {});
    renderEndpoints(snap.endpoints || []);
    if (snap.perfd) renderPerfd(snap.perfd);
    $("detached").hidden = true;
    $("updated").textContent = new Date(snap.timestamp * 1000).toLocaleTimeString();
    maybeFetchProfile();
  }

  function renderSystem(s) {
    $("g-cpu").value = s.cpu_percent || 0;
    $("v-cpu").textContent = fixed(s.cpu_percent, 1) + " %";
    $("g-mem").value = s.memory_percent || 0;
    $("v-mem").textContent = `${fixed(s.memory_used_mb, 0)} / ${fixed(s.memory_total_mb, 0)} MiB (${fixed(s.memory_percent, 1)} %)`;
    $("v-threads").textContent = count(s.thread_count);
    $("v-queue").textContent = count(s.queue_depth);
  }

  function opsText(ops) {
    if (!ops) return "";
    return Object.entries(ops)
      .sort((a, b) => b[1].calls - a[1].calls)
      .map(([name, op]) => `${name} ${fixed(op.avg_ms, 2)} ms × ${count(op.calls)}`)
      .join(", ");
  }

  function renderNodes(dag) {
    const nodes = dag.nodes || [];
    $("node-count").textContent = `${dag.running_nodes || 0} running / ${dag.total_nodes || 0}`;
    $("nodes-empty").hidden = nodes.length > 0;
    if (!state.selectedNode || !nodes.some((n) => n.node_id === state.selectedNode)) {
      const busiest = busiestNodes()[0];
      selectNode(busiest ? busiest.node_id : null, true);
    }
    fillTable(
      $("nodes"),
      nodes.map((n) => {
        const row = document.createElement("tr");
        row.dataset.nodeId = n.node_id;
        if (n.node_id === state.selectedNode) row.classList.add("selected");
        const name = td(n.node_name || n.node_id, "node_name");
        const id = document.createElement("small");
        id.className = "muted";
        id.textContent = n.node_name !== n.node_id ? " " + shortId(n.node_id) : "";
        name.title = n.node_id;
        name.appendChild(id);
        row.append(
          name,
          td(n.node_type, "node_type"),
          td(fixed(n.last_exec_ms, 2), "last_exec_ms", "num"),
          td(fixed(n.avg_exec_ms, 2), "avg_exec_ms", "num"),
          td(count(n.calls_total), "calls_total", "num"),
          td(count(Math.round(n.throughput_pps || 0)), "throughput_pps", "num"),
          td(count(n.last_point_count), "last_point_count", "num"),
          td(count(n.throttled_count), "throttled_count", "num"),
          td(opsText(n.open3d_ops), "open3d_ops", "ops"),
        );
        row.addEventListener("click", () => {
          selectNode(n.node_id);
          renderNodes(state.snapshot.dag || {});
        });
        return row;
      }),
    );
  }

  function renderTopics(ws) {
    $("ws-connections").textContent = `${ws.total_connections || 0} connections`;
    const topics = Object.entries(ws.topics || {}).sort((a, b) => (a[0] < b[0] ? -1 : 1));
    fillTable(
      $("topics"),
      topics.map(([name, t]) => {
        const row = document.createElement("tr");
        row.dataset.topic = name;
        row.append(
          td(name, "topic"),
          td(fixed(t.messages_per_sec, 1), "messages_per_sec", "num"),
          td(bytes(t.bytes_per_sec) + "/s", "bytes_per_sec", "num"),
          td(count(t.active_connections), "active_connections", "num"),
          td(count(t.total_messages), "total_messages", "num"),
          td(bytes(t.total_bytes), "total_bytes", "num"),
        );
        return row;
      }),
    );
  }

  function renderEndpoints(endpoints) {
    const sorted = [...endpoints].sort((a, b) => (a.path + a.method < b.path + b.method ? -1 : 1));
    fillTable(
      $("endpoints"),
      sorted.map((e) => {
        const row = document.createElement("tr");
        row.dataset.endpoint = `${e.method} ${e.path}`;
        row.append(
          td(e.method, "method"),
          td(e.path, "path"),
          td(fixed(e.avg_latency_ms, 2), "avg_latency_ms", "num"),
          td(count(e.calls_total), "calls_total", "num"),
          td(String(e.last_status_code), "last_status_code", "num"),
        );
        return row;
      }),
    );
  }

  function renderPerfd(p) {
    const t = p.target;
    $("target").textContent = t ? `PID ${t.pid} · Python ${t.python} · ${t.exe}` : "no target";
    fillTable(
      $("sources"),
      Object.entries(p.sources || {}).map(([name, s]) => {
        const row = document.createElement("tr");
        row.dataset.source = name;
        row.className = s.active ? "on" : "off";
        row.append(td(name, "name"), td(s.active ? "active" : "off", "active"), td(s.reason || "", "reason"));
        return row;
      }),
    );
    renderExtras(p);
    const s = p.sampler || {};
    $("sampler").textContent =
      `sampler ${fixed(s.achieved_hz, 0)} / ${fixed(s.rate_hz, 0)} Hz · ${count(s.samples_total)} samples` +
      ` (${count(s.samples_failed)} failed) · perfd CPU ${fixed(s.cpu_percent, 1)} %`;
  }

  // A source's own status published as an additive key of the perfd section
  // (e.g. capture's kernel drops): shown as flat "key value" lines.
  function renderExtras(p) {
    const known = new Set(["target", "sources", "sampler"]);
    const lines = [];
    for (const [name, value] of Object.entries(p)) {
      if (known.has(name) || value === null || typeof value !== "object") continue;
      const parts = Object.entries(value)
        .filter(([, v]) => v === null || typeof v !== "object")
        .map(([k, v]) => `${k} ${typeof v === "number" ? count(v) : v}`);
      if (parts.length) lines.push(`${name}: ${parts.join(" · ")}`);
    }
    const box = $("extras");
    box.textContent = lines.join("\n");
    box.hidden = !lines.length;
  }

  // --- health: why there is no data --------------------------------------------

  async function pollHealth() {
    try {
      const response = await fetch("/api/health/performance", { headers, cache: "no-store" });
      if (!response.ok) return;
      const health = await response.json();
      const banner = $("detached");
      if (!health.metrics_enabled) {
        banner.hidden = false;
        banner.textContent = "not attached: " + (health.detail || "no source active");
        if (health.perfd) renderPerfd(health.perfd);
      } else {
        banner.hidden = true;
      }
    } catch (e) {
      /* the WebSocket badge already says the server is unreachable */
    }
  }

  // --- flame graph ---------------------------------------------------------------

  function busiestNodes() {
    const nodes = (state.snapshot && state.snapshot.dag && state.snapshot.dag.nodes) || [];
    return [...nodes].sort((a, b) => b.calls_total - a.calls_total);
  }

  function selectNode(nodeId, auto = false) {
    state.autoSelected = auto;
    if (nodeId === state.selectedNode) return;
    state.selectedNode = nodeId;
    state.profileAt = 0;
    $("flame-node").textContent = nodeId ? nodeLabel(nodeId) : "";
    $("flame-node").title = nodeId || "";
    const link = $("speedscope-link");
    link.hidden = !nodeId;
    if (nodeId) {
      const q = new URLSearchParams({ node_id: nodeId, format: "speedscope" });
      if (token) q.set("token", token);
      link.href = "/api/profile?" + q.toString();
    }
    maybeFetchProfile();
  }

  function flameMessage(text) {
    const box = $("flame");
    if (box.dataset.message === text) return;
    box.dataset.message = text;
    box.textContent = "";
    delete box.dataset.frames;
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    box.appendChild(p);
  }

  async function maybeFetchProfile() {
    const nodeId = state.selectedNode;
    if (!nodeId) {
      flameMessage("no node to profile yet");
      return;
    }
    const now = Date.now();
    if (state.profileNode === nodeId && now - state.profileAt < PROFILE_EVERY_MS) return;
    state.profileNode = nodeId;
    state.profileAt = now;
    const q = new URLSearchParams({ node_id: nodeId, format: "collapsed" });
    let response;
    try {
      response = await fetch("/api/profile?" + q.toString(), { headers, cache: "no-store" });
    } catch (e) {
      return;
    }
    if (state.selectedNode !== nodeId) return;
    if (response.status === 404) {
      flameMessage(`no profile yet for ${nodeLabel(nodeId)}`);
      return;
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (e) {
        /* not JSON */
      }
      flameMessage(`no profile: ${detail}`);
      return;
    }
    const text = await response.text();
    const tree = window.PerfdFlame.parse(text);
    if (!tree.value) {
      if (state.autoSelected) {
        // a node whose own work is too short to be sampled yet (an upstream node
        // whose time is mostly its downstream calls): show the next busiest one
        state.emptyProfiles.add(nodeId);
        const next = busiestNodes().find((n) => !state.emptyProfiles.has(n.node_id));
        if (next) {
          selectNode(next.node_id, true);
          return;
        }
        state.emptyProfiles.clear(); // none has samples yet: go round again at the next poll
      }
      flameMessage(`no samples yet for ${nodeLabel(nodeId)}`);
      return;
    }
    delete $("flame").dataset.message;
    window.PerfdFlame.render($("flame"), tree);
  }

  connect();
  setInterval(checkStale, 500);
  pollHealth();
  setInterval(pollHealth, HEALTH_EVERY_MS);
})();
