// Flame graph from collapsed-stack text ("root;child;leaf COUNT" per line),
// the format perfd's /api/profile, py-spy and flamegraph.pl share.
// Root at the bottom, like the classic flame graph; click a frame to zoom
// into it, click the root bar to zoom out. No dependencies.
"use strict";

(function () {
  const ROW = 18;
  const SVG_NS = "http://www.w3.org/2000/svg";

  function parse(text) {
    const root = { name: "all", value: 0, children: new Map() };
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line) continue;
      const cut = line.lastIndexOf(" ");
      if (cut <= 0) continue;
      const count = Number(line.slice(cut + 1));
      if (!Number.isFinite(count) || count <= 0) continue;
      root.value += count;
      let node = root;
      for (const frame of line.slice(0, cut).split(";")) {
        if (!frame) continue;
        let child = node.children.get(frame);
        if (!child) {
          child = { name: frame, value: 0, children: new Map() };
          node.children.set(frame, child);
        }
        child.value += count;
        node = child;
      }
    }
    return root;
  }

  function depth(node) {
    let d = 0;
    for (const child of node.children.values()) d = Math.max(d, depth(child));
    return d + 1;
  }

  function color(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    const hue = 10 + (h % 45); // warm: red → yellow
    const light = 52 + ((h >> 8) % 14);
    return `hsl(${hue}, 85%, ${light}%)`;
  }

  // Draw ``tree`` into ``container``; returns the number of frames drawn.
  function render(container, tree, focus) {
    focus = focus || tree;
    container.textContent = "";
    const width = Math.max(container.clientWidth || 0, 300);
    const rows = depth(focus);
    const height = rows * ROW;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "flame");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("data-total", tree.value);
    let drawn = 0;

    function frame(node, x, level, w) {
      if (w < 0.5) return;
      const y = height - (level + 1) * ROW;
      const g = document.createElementNS(SVG_NS, "g");
      g.setAttribute("class", "frame");
      g.setAttribute("data-name", node.name);
      g.setAttribute("data-value", node.value);
      const title = document.createElementNS(SVG_NS, "title");
      const pct = tree.value ? ((100 * node.value) / tree.value).toFixed(1) : "0";
      title.textContent = `${node.name}\n${node.value} samples (${pct}%)`;
      g.appendChild(title);
      const rect = document.createElementNS(SVG_NS, "rect");
      rect.setAttribute("x", x.toFixed(1));
      rect.setAttribute("y", y);
      rect.setAttribute("width", Math.max(w - 0.5, 0.5).toFixed(1));
      rect.setAttribute("height", ROW - 1);
      rect.setAttribute("fill", node === focus && node === tree ? "#9aa5b1" : color(node.name));
      g.appendChild(rect);
      if (w > 28) {
        const label = document.createElementNS(SVG_NS, "text");
        label.setAttribute("x", (x + 3).toFixed(1));
        label.setAttribute("y", y + ROW - 5);
        const chars = Math.floor((w - 6) / 6.5);
        label.textContent = node.name.length > chars ? node.name.slice(0, Math.max(chars - 1, 1)) + "…" : node.name;
        g.appendChild(label);
      }
      g.addEventListener("click", (event) => {
        event.stopPropagation();
        render(container, tree, node === focus ? tree : node);
      });
      svg.appendChild(g);
      drawn++;
      let cx = x;
      const children = [...node.children.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
      for (const child of children) {
        const cw = (w * child.value) / node.value;
        frame(child, cx, level + 1, cw);
        cx += cw;
      }
    }

    frame(focus, 0, 0, width);
    container.appendChild(svg);
    container.dataset.frames = String(drawn);
    return drawn;
  }

  window.PerfdFlame = { parse, render };
})();
