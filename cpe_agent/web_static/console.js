// pcloud's read-only console: draws what cped's /api/stream sends (Server-Sent Events).
// Everything from the server is shown with textContent, never parsed as HTML.
"use strict";

const MAX_EVENTS = 200;
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#ad1457",
                "#4e342e", "#283593", "#558b2f"];

const view = { deployables: new Map(), incidents: new Map(), events: [], seen: new Set() };
let chart = null;
let chartKey = "";
let drawQueued = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(state) {
  return el("span", { class: "state " + state, "data-state": state }, state || "?");
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString([], { hour12: false }) : "";
}

function ms(value) {
  if (value === null || value === undefined) return "";
  return value >= 10000 ? (value / 1000).toFixed(1) + " s" : Math.round(value) + " ms";
}

function component(item) {
  return [item.deployable, item.assembly, item.resource].filter(p => p && p !== "-").join("/");
}

// --- deployables --------------------------------------------------------------------------

function drawDeployables() {
  const box = document.getElementById("deployables");
  box.replaceChildren();
  if (!view.deployables.size) {
    box.append(el("p", { class: "empty" }, "No deployable yet."));
    return;
  }
  for (const dep of [...view.deployables.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const card = el("div", { class: "deployable", "data-deployable": dep.name, "data-state": dep.state },
      el("div", { class: "title" }, dep.name, badge(dep.state),
         el("span", { class: "why" }, dep.state === "running" ? "" : dep.reason || "")));
    const body = el("tbody");
    for (const asm of dep.assemblies) {
      body.append(el("tr", { "data-assembly": asm.name },
        el("td", {}, asm.name), el("td", {}, badge(asm.state)), el("td", {}, ""),
        el("td", {}, ""), el("td", { class: "why" }, asm.state === "running" ? "" : asm.reason || "")));
      for (const rsc of asm.resources) {
        body.append(el("tr", { "data-resource": asm.name + "/" + rsc.name, "data-state": rsc.state,
                               "data-fail-count": rsc.fail_count },
          el("td", {}, ""), el("td", {}, ""), el("td", {}, rsc.name), el("td", {}, badge(rsc.state)),
          el("td", {}, "failures: " + rsc.fail_count)));
      }
    }
    card.append(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "assembly"), el("th", {}, "state"),
                         el("th", {}, "resource"), el("th", {}, "state"), el("th", {}, ""))),
      body));
    box.append(card);
  }
}

// --- incidents ----------------------------------------------------------------------------

function drawIncidents() {
  const body = document.querySelector("#incidents tbody");
  body.replaceChildren();
  const incidents = [...view.incidents.values()].sort((a, b) => b.detected_at - a.detected_at);
  for (const inc of incidents.slice(0, 100)) {
    const steps = el("div", { class: "timeline" });
    inc.steps.forEach((step, i) => {
      if (i) steps.append(" → ");
      steps.append(el("span", { class: "step " + step.phase, title: step.reason || "" },
                      step.phase + (i ? " +" + ms(step.after_ms) : "")));
    });
    const open = inc.duration_ms === null || inc.duration_ms === undefined;
    body.append(el("tr", { "data-incident": inc.id, "data-component": component(inc),
                           "data-duration-ms": open ? "" : String(inc.duration_ms) },
      el("td", {}, component(inc)), el("td", {}, clock(inc.detected_at)), el("td", {}, steps),
      el("td", open ? { class: "open" } : {}, open ? "open" : ms(inc.duration_ms)),
      el("td", { class: "why" }, inc.reason || "")));
  }
}

// --- MTTR plot (uPlot) -------------------------------------------------------------------

function drawMttr() {
  const box = document.getElementById("mttr");
  const closed = [...view.incidents.values()].filter(i => i.recovered_at && i.duration_ms !== null);
  if (!closed.length) {
    if (chart) { chart.destroy(); chart = null; chartKey = ""; }
    box.replaceChildren(el("p", { class: "empty" }, "No recovered incident yet."));
    return;
  }
  const names = [...new Set(closed.map(component))].sort();
  const xs = [...new Set(closed.map(i => i.recovered_at))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const data = [xs, ...names.map(() => xs.map(() => null))];
  for (const inc of closed) {
    data[names.indexOf(component(inc)) + 1][index.get(inc.recovered_at)] = inc.duration_ms;
  }
  const key = names.join("\n");
  if (chart && key === chartKey) {
    chart.setData(data);
    frame(xs);
    return;
  }
  if (chart) chart.destroy();
  box.replaceChildren();
  chartKey = key;
  chart = new uPlot({
    width: Math.max(320, box.clientWidth - 8), height: 260,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.15, 10)] } },
    series: [{}, ...names.map((name, i) => ({
      label: name, stroke: COLORS[i % COLORS.length], width: 1, spanGaps: true,
      points: { show: true, size: 7, fill: COLORS[i % COLORS.length] },
      value: (u, v) => v === null ? "–" : ms(v),
    }))],
    axes: [{ space: 90 }, { label: "MTTR (ms)", size: 60 }],
  }, data, box);
  frame(xs);
}

// A few minutes either side of the points: a single point would otherwise span years.
function frame(xs) {
  chart.setScale("x", { min: xs[0] - 120, max: xs[xs.length - 1] + 120 });
}

// --- live events --------------------------------------------------------------------------

function eventLine(ev) {
  const what = [ev.state && ("→ " + ev.state), ev.reason].filter(Boolean).join(" ");
  const timing = ev.duration_ms ? " (" + ms(Number(ev.duration_ms)) + ")" : "";
  return el("li", { "data-seq": ev.seq },
    el("span", { class: "t" }, (ev.time || "").replace("T", " ").replace("Z", "") + " "),
    el("span", { class: "ty" }, ev.type + " "), component(ev) + " " + what + timing);
}

function addEvent(ev) {
  const id = ev.deployable + "#" + ev.seq;
  if (view.seen.has(id)) return false;
  view.seen.add(id);
  view.events.push(ev);
  if (view.events.length > MAX_EVENTS) {
    const old = view.events.shift();
    view.seen.delete(old.deployable + "#" + old.seq);
  }
  return true;
}

function drawEvents() {
  const list = document.getElementById("events");
  list.replaceChildren(...view.events.slice().reverse().map(eventLine));
}

// --- the stream ---------------------------------------------------------------------------

function draw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    drawDeployables();
    drawIncidents();
    drawMttr();
    drawEvents();
  });
}

function take(message) {
  switch (message.kind) {
    case "snapshot":
      view.deployables = new Map(message.deployables.map(d => [d.name, d]));
      view.incidents = new Map(message.incidents.map(i => [i.id, i]));
      view.events = [];
      view.seen = new Set();
      message.events.forEach(addEvent);
      break;
    case "status":
      view.deployables.set(message.deployable.name, message.deployable);
      break;
    case "gone":
      view.deployables.delete(message.name);
      break;
    case "event":
      addEvent(message.event);
      applyState(message.event);
      break;
    case "incident":
      view.incidents.set(message.incident.id, message.incident);
      break;
  }
  draw();
}

// A state change shows at once; the status that follows confirms it.
function applyState(ev) {
  const dep = view.deployables.get(ev.deployable);
  if (!dep || !ev.state || !ev.type.endsWith("_state_change")) return;
  if (ev.type === "deployable_state_change") { dep.state = ev.state; return; }
  for (const asm of dep.assemblies) {
    if (asm.name !== ev.assembly) continue;
    if (ev.type === "assembly_state_change") asm.state = ev.state;
    for (const rsc of asm.resources) if (rsc.name === ev.resource) rsc.state = ev.state;
  }
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/api/stream");
  source.onopen = () => { link.textContent = "live"; link.className = "link up"; };
  source.onerror = () => { link.textContent = "reconnecting…"; link.className = "link down"; };
  source.onmessage = (e) => take(JSON.parse(e.data));
}

window.addEventListener("resize", () => { if (chart) { chart.destroy(); chart = null; chartKey = ""; draw(); } });
connect();
