// Calls (#/calls), from GET /api/v1/calls: a search (route, consumer, status, a time range
// read in the browser's time zone, a limit), the matching calls newest first, and one call's
// details. The search applied is read again every refresh; the form is built once and never
// redrawn (what is typed and where the focus is survive a refresh), and the call chosen stays
// shown until another is chosen or it is closed.

import { get } from "./api.js";
import { h, alertBox, fill, section, table, syncRows, fmtInt, fmtNum, fmtMs, fmtTime } from "./dom.js";

export const title = "Calls";

// Refreshes between two reads of the route names offered in the search (30 s).
const ROUTE_EVERY = 6;

function fmtBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  if (n < 1024) return `${fmtInt(n)} B`;
  if (n < 1024 * 1024) return `${fmtNum(n / 1024, 1)} KiB`;
  return `${fmtNum(n / (1024 * 1024), 1)} MiB`;
}

// Today's calls by their time only; older ones with their date.
function when(ms) {
  return new Date(ms).toDateString() === new Date().toDateString() ? fmtTime(ms, false) : fmtTime(ms);
}

function statusBadge(status) {
  const cls = status >= 500 ? "bad" : status >= 400 ? "warn" : "ok";
  return h("span", { class: `badge ${cls}` }, String(status));
}

function where(c) {
  const parts = [c.upstream, c.target].filter((x) => x);
  return parts.length ? parts.join(" · ") : "–";
}

// A labelled control of the search form.
function control(id, label, attrs) {
  const input = h("input", { id, name: id.replace(/^calls-/, ""), autocomplete: "off", spellcheck: "false", ...attrs });
  return { input, el: h("div", { class: "field" }, h("label", { for: id }, label), input) };
}

// A datetime-local value ("2026-11-23T12:00" or with seconds), read in the browser's time
// zone, as milliseconds since the epoch; null when empty, NaN when malformed.
function localMs(value) {
  if (!value) return null;
  return new Date(value).getTime();
}

function searchForm(onSearch) {
  const route = control("calls-route", "Route", { type: "text", list: "calls-routes", placeholder: "any" });
  const consumer = control("calls-consumer", "Consumer", { type: "text", placeholder: "any" });
  const status = control("calls-status", "Status", { type: "number", min: 100, max: 599, step: 1, placeholder: "any", inputmode: "numeric" });
  const since = control("calls-since", "Since (local time)", { type: "datetime-local", step: 1 });
  const until = control("calls-until", "Until (local time)", { type: "datetime-local", step: 1 });
  const limit = control("calls-limit", "At most", { type: "number", min: 1, max: 1000, step: 1, value: 100, required: true });
  const routes = h("datalist", { id: "calls-routes" });
  const message = h("div", { class: "form-status" });
  const form = h("form", { id: "calls-search", class: "search", "aria-label": "Search the calls" },
    h("fieldset", {}, h("legend", {}, "Search"),
      route.el, consumer.el, status.el, since.el, until.el, limit.el,
      h("div", { class: "buttons" },
        h("button", { type: "submit" }, "Search"),
        h("button", { type: "reset" }, "Clear"))),
    routes, message);
  const read = () => {
    const query = new URLSearchParams();
    const text = (input, key) => {
      const v = input.value.trim();
      if (v) query.set(key, v);
    };
    text(route.input, "route");
    text(consumer.input, "consumer");
    text(status.input, "status");
    const from = localMs(since.input.value);
    const to = localMs(until.input.value);
    if (Number.isNaN(from) || Number.isNaN(to)) throw new Error("Give the times as a date and a time.");
    if (from !== null && to !== null && to <= from) throw new Error("“Until” must be after “Since”.");
    if (from !== null) query.set("since", String(from));
    if (to !== null) query.set("until", String(to));
    query.set("limit", limit.input.value.trim() || "100");
    return query;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    message.replaceChildren();
    try {
      onSearch(read());
    } catch (error) {
      message.replaceChildren(alertBox(error));
    }
  });
  // After the reset has put the defaults back, search with them.
  form.addEventListener("reset", () => setTimeout(() => {
    message.replaceChildren();
    onSearch(read());
  }, 0));
  return {
    form,
    routes(names) {
      const same = routes.options.length === names.length
        && names.every((n, i) => routes.options[i].value === n);
      if (!same) routes.replaceChildren(...names.map((n) => h("option", { value: n })));
    },
  };
}

function detail(label, value) {
  return [h("dt", {}, label), h("dd", {}, value === null || value === undefined || value === "" ? "–" : value)];
}

function details(c, close) {
  const llm = c.provider || c.model || typeof c.prompt_tokens === "number";
  return [
    h("div", { class: "details-head" },
      h("h2", { id: "call-details-title", tabindex: "-1" }, `${c.method} ${c.path}`),
      h("button", { type: "button", class: "act", "aria-label": "Close the call's details", onclick: close }, "Close")),
    h("p", {}, statusBadge(c.status), " ", h("time", { datetime: new Date(c.time_ms).toISOString() }, fmtTime(c.time_ms))),
    h("dl", { class: "kv" },
      detail("Request id", h("code", { "data-testid": "call-request-id" }, c.request_id)),
      detail("Trace id", c.trace_id ? h("code", {}, c.trace_id) : null),
      detail("Route", c.route),
      detail("Consumer", c.consumer),
      detail("Attempts", fmtInt(c.attempts)),
      detail("Upstream", c.upstream),
      detail("Target", c.target),
      detail("Latency", fmtMs(c.latency_ms)),
      detail("Upstream time", fmtMs(c.upstream_ms)),
      detail("Bytes in", fmtBytes(c.bytes_in)),
      detail("Bytes out", fmtBytes(c.bytes_out)),
      detail("Error", c.error ? h("code", {}, c.error) : null),
      detail("Fault injected", c.fault),
      c.node !== undefined ? detail("Node", c.node) : null,
      llm ? [
        detail("Provider", c.provider),
        detail("Model", c.model),
        detail("Prompt tokens", fmtInt(c.prompt_tokens)),
        detail("Completion tokens", fmtInt(c.completion_tokens)),
        detail("Cost", typeof c.cost_usd === "number" ? `$${fmtNum(c.cost_usd, 6)}` : null),
      ] : null),
  ];
}

export function mount(root) {
  const results = table("Calls, newest first", ["Time", "Route", "Consumer", "Method", "Path", "Status", "#Latency", "Upstream · target", "Model"]);
  const panel = h("section", { class: "panel call-details", id: "call-details", "data-testid": "call-details", "aria-labelledby": "call-details-title", hidden: true });
  const grid = h("div", { class: "calls-grid" });
  const count = h("p", { class: "muted small", id: "calls-count", role: "status" });
  let selected = null;
  let query = new URLSearchParams({ limit: "100" });
  // Bumped per read: an answer older than the latest read is dropped.
  let seq = 0;
  let ticks = 0;

  const mark = () => {
    for (const row of results.body.querySelectorAll("tr[data-request-id]")) {
      const on = selected !== null && row.dataset.requestId === selected.request_id;
      row.classList.toggle("selected", on);
      const button = row.querySelector("button");
      if (button) button.setAttribute("aria-pressed", on ? "true" : "false");
    }
  };
  const close = () => {
    const id = selected && selected.request_id;
    selected = null;
    panel.hidden = true;
    grid.classList.remove("open");
    panel.replaceChildren();
    mark();
    const row = id && results.body.querySelector(`tr[data-request-id="${CSS.escape(id)}"] button`);
    if (row) row.focus();
  };
  const choose = (c) => {
    selected = c;
    panel.replaceChildren(...details(c, close));
    panel.hidden = false;
    grid.classList.add("open");
    mark();
    panel.querySelector("h2").focus();
  };
  const row = (c) => h("tr", { "data-testid": "call-row", "data-request-id": c.request_id, "data-path": c.path, "data-status": c.status },
    h("th", { scope: "row" },
      h("button", {
        type: "button", class: "link nowrap", "aria-pressed": "false",
        "aria-label": `Details of the call at ${fmtTime(c.time_ms)}, ${c.method} ${c.path}, request ${c.request_id}`,
        onclick: () => choose(c),
      }, when(c.time_ms))),
    h("td", {}, c.route || "–"),
    h("td", {}, c.consumer || "–"),
    h("td", {}, c.method),
    h("td", { class: "path" }, c.path),
    h("td", {}, statusBadge(c.status)),
    h("td", { class: "num" }, fmtMs(c.latency_ms)),
    h("td", {}, where(c)),
    h("td", {}, c.model || "–"));

  const load = async () => {
    const mine = ++seq;
    let answer;
    try {
      answer = await get(`/api/v1/calls?${query}`);
    } catch (error) {
      if (mine === seq) fill(root, "calls-error", alertBox(error));
      return;
    }
    if (mine !== seq) return;
    fill(root, "calls-error");
    const list = answer.calls || [];
    syncRows(results.body, list, (c) => c.request_id, row,
      () => h("tr", {}, h("td", { colspan: 9, class: "muted", "data-testid": "no-call" }, "No call matches this search.")));
    mark();
    const limit = Number(query.get("limit")) || 100;
    const text = list.length >= limit
      ? `The newest ${fmtInt(list.length)} matching calls (the limit): narrow the search or raise the limit to see older ones.`
      : `${fmtInt(list.length)} matching ${list.length === 1 ? "call" : "calls"}, newest first.`;
    // A live region: said again only when it changes.
    if (count.textContent !== text) count.textContent = text;
    fill(root, "calls-updated", `Updated ${fmtTime(Date.now(), false)}`);
  };
  const search = searchForm((q) => {
    query = q;
    load();
  });
  const routeNames = async () => {
    try {
      const answer = await get("/api/v1/routes");
      search.routes((answer.routes || []).map((r) => r.name).filter((n) => n));
    } catch {
      // Only the suggestions are missing: any route name can still be typed.
      ticks = 0;
    }
  };

  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title), h("p", { class: "muted", id: "calls-updated" })),
    section("calls-find", "Find calls", search.form),
    h("div", { id: "calls-error" }),
    grid,
  );
  grid.append(section("calls-list", "Calls", count, results.el), panel);
  return {
    async refresh() {
      await Promise.all([load(), ticks++ % ROUTE_EVERY === 0 ? routeNames() : null]);
    },
  };
}
