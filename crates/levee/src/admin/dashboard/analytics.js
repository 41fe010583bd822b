// Analytics (#/analytics), from GET /api/v1/analytics: the call log aggregated by the API per
// time bucket and group (route, consumer, upstream, status or model). Charts over time (the
// requests of the busiest groups on one scale; requests and errors, latency percentiles,
// tokens and cost of one group) and a totals row per group. The page never reads raw calls.
// Short ranges are read again every refresh (5 s), ranges of 6 h and more every 30 s.

import { get } from "./api.js";
import { h, alertBox, fill, section, table, syncRows, fmtInt, fmtNum, fmtMs, fmtPct, fmtTime } from "./dom.js";
import { lineChart } from "./chart.js";
import { setOptions } from "./forms.js";

export const title = "Analytics";

const GROUPS = [
  { value: "route", label: "Route" },
  { value: "consumer", label: "Consumer" },
  { value: "upstream", label: "Upstream" },
  { value: "status", label: "Status" },
  { value: "model", label: "Model" },
];
const BUCKETS = [
  { value: "1m", label: "1 minute" },
  { value: "1h", label: "1 hour" },
  { value: "1d", label: "1 day" },
];
const RANGES = [
  { value: "900000", label: "Last 15 minutes" },
  { value: "3600000", label: "Last hour" },
  { value: "21600000", label: "Last 6 hours" },
  { value: "86400000", label: "Last 24 hours" },
  { value: "604800000", label: "Last 7 days" },
];
// What a call without the grouped field is shown as.
const NONE = {
  route: "(no route)", consumer: "(anonymous)", upstream: "(none)", status: "–", model: "(not an LLM call)",
};
// Lines drawn in the chart of the busiest groups.
const TOP = 4;
// A timeline longer than this many buckets shows only the buckets with calls.
const MAX_POINTS = 3000;
const SLOW_RANGE_MS = 21600000;

function fmtUsd(v) {
  return typeof v === "number" && Number.isFinite(v) ? `$${fmtNum(v, v < 1 ? 4 : 2)}` : "–";
}

function select(id, label, options) {
  const el = h("select", { id, name: id.replace(/^an-/, "") });
  setOptions(el, options);
  return { el, field: h("div", { class: "field" }, h("label", { for: id }, label), el) };
}

// Per group: its totals and its cells by bucket start.
function byGroup(cells) {
  const groups = new Map();
  for (const c of cells) {
    const key = c.group === null || c.group === undefined ? "" : String(c.group);
    let g = groups.get(key);
    if (!g) {
      g = {
        group: key, requests: 0, errors: 0, p99: null, prompt: 0, completion: 0, cost: 0,
        bytesIn: 0, bytesOut: 0, cells: new Map(),
      };
      groups.set(key, g);
    }
    g.requests += c.requests;
    g.errors += c.errors;
    g.p99 = g.p99 === null ? c.p99_ms : Math.max(g.p99, c.p99_ms);
    g.prompt += c.prompt_tokens || 0;
    g.completion += c.completion_tokens || 0;
    g.cost += c.cost_usd || 0;
    g.bytesIn += c.bytes_in || 0;
    g.bytesOut += c.bytes_out || 0;
    g.cells.set(c.bucket_start_ms, c);
  }
  return Array.from(groups.values()).sort((a, b) => b.requests - a.requests || a.group.localeCompare(b.group));
}

// Every bucket start from the first with calls to the end of the range (empty buckets too,
// so time is spaced evenly), or only those with calls when that would be too many points.
// (Starting at the first call keeps a short burst drawn: the chart marks single points only
// on short timelines.)
function timeline(answer, cells) {
  const step = answer.bucket_ms || 60000;
  if (!cells.length) return [];
  const first = Math.min(...cells.map((c) => c.bucket_start_ms));
  const count = Math.ceil((answer.until_ms - first) / step);
  if (count > 0 && count <= MAX_POINTS) return Array.from({ length: count }, (_, i) => first + i * step);
  return Array.from(new Set(cells.map((c) => c.bucket_start_ms))).sort((a, b) => a - b);
}

function charts(times, groups, chosen, name) {
  if (!groups.length) return h("p", { class: "muted" }, "No call in this range.");
  const label = (g) => g.group || NONE[name];
  const value = (g, field, empty) => times.map((t) => {
    const c = g.cells.get(t);
    return c ? c[field] : empty;
  });
  const top = groups.slice(0, TOP);
  const topMax = Math.max(1, ...top.flatMap((g) => value(g, "requests", 0)));
  const out = [
    lineChart(`Requests per bucket, the ${top.length} busiest by ${name} (one scale)`, times, top.map((g, i) => ({
      label: label(g), cls: `s${i + 1}`, values: value(g, "requests", 0), format: fmtInt, max: topMax,
    }))),
  ];
  const g = groups.find((x) => x.group === chosen) || groups[0];
  const who = `${name} ${label(g)}`;
  out.push(lineChart(`Requests and errors (5xx) of ${who}`, times, [
    { label: "Requests", cls: "s1", values: value(g, "requests", 0), format: fmtInt },
    { label: "Errors", cls: "s3", values: value(g, "errors", 0), format: fmtInt },
  ]));
  const latency = ["p50_ms", "p99_ms"].map((f) => value(g, f, null));
  const latencyMax = Math.max(1, ...latency.flat().filter((v) => typeof v === "number"));
  out.push(lineChart(`Latency p50 and p99 of ${who} (one scale)`, times, [
    { label: "p50", cls: "s2", values: latency[0], format: fmtMs, max: latencyMax },
    { label: "p99", cls: "s4", values: latency[1], format: fmtMs, max: latencyMax },
  ]));
  if (g.prompt + g.completion + g.cost > 0) {
    out.push(lineChart(`Tokens and cost of ${who}`, times, [
      { label: "Prompt tokens", cls: "s1", values: value(g, "prompt_tokens", 0), format: fmtInt },
      { label: "Completion tokens", cls: "s2", values: value(g, "completion_tokens", 0), format: fmtInt },
      { label: "Cost", cls: "s4", values: value(g, "cost_usd", 0), format: fmtUsd },
    ]));
  } else {
    out.push(h("p", { class: "muted small" }, `No LLM call (tokens, cost) for ${who} in this range.`));
  }
  return out;
}

function row(name) {
  return (g) => h("tr", { "data-testid": "analytics-row", "data-group": g.group },
    h("th", { scope: "row" }, g.group || NONE[name]),
    h("td", { class: "num", "data-testid": "analytics-requests" }, fmtInt(g.requests)),
    h("td", { class: "num" }, fmtInt(g.errors)),
    h("td", { class: g.errors ? "num bad" : "num" }, fmtPct(g.requests ? g.errors / g.requests : 0)),
    h("td", { class: "num" }, fmtMs(g.p99)),
    h("td", { class: "num" }, fmtInt(g.prompt + g.completion)),
    h("td", { class: "num" }, fmtUsd(g.cost)));
}

export function mount(root) {
  const groupBy = select("an-group", "Group by", GROUPS);
  const bucket = select("an-bucket", "Bucket", BUCKETS);
  const range = select("an-range", "Range", RANGES);
  range.el.value = "3600000";
  const route = select("an-route", "Route", []);
  setOptions(route.el, [], "(all routes)");
  const chart = select("an-chart", "Charts of", []);
  const form = h("form", { id: "an-controls", class: "search", "aria-label": "What to aggregate" },
    h("fieldset", {}, h("legend", {}, "Aggregate"), groupBy.field, bucket.field, range.field, route.field, chart.field));
  const totals = table("Totals per group over the range", ["Group", "#Requests", "#Errors", "#Error rate", "#Worst p99", "#Tokens", "#Cost"]);
  const head = totals.el.querySelector("thead th");
  const note = h("p", { class: "muted small", id: "an-range-text" });
  const truncated = h("div", { role: "status" });
  let seq = 0;
  let ticks = 0;
  let last = null;

  const draw = () => {
    if (!last) return;
    const { answer, name } = last;
    const cells = answer.series || [];
    const groups = byGroup(cells);
    setOptions(chart.el, groups.slice(0, 50).map((g) => ({ value: g.group, label: g.group || NONE[name] })));
    fill(root, "an-charts", charts(timeline(answer, cells), groups, chart.el.value, name));
    head.textContent = GROUPS.find((g) => g.value === name).label;
    // Rows keyed and compared on their totals only (a row is rebuilt when they change).
    const items = groups.map(({ cells: _cells, ...rest }) => rest);
    syncRows(totals.body, items, (g) => `${name}:${g.group}`, row(name),
      () => h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No call in this range.")));
  };
  const load = async () => {
    const mine = ++seq;
    const name = groupBy.el.value;
    const until = Date.now();
    const since = until - Number(range.el.value);
    const query = new URLSearchParams({ group_by: name, bucket: bucket.el.value, since: String(since), until: String(until + 1) });
    if (route.el.value) query.set("route", route.el.value);
    let answer;
    try {
      answer = await get(`/api/v1/analytics?${query}`);
    } catch (error) {
      if (mine === seq) fill(root, "an-error", alertBox(error));
      return;
    }
    if (mine !== seq) return;
    fill(root, "an-error");
    last = { answer, name };
    draw();
    const text = answer.truncated
      ? "The range holds more calls than one request reads (200,000): these figures cover its oldest calls only. Narrow the range or pick a route."
      : "";
    if (truncated.textContent !== text) truncated.replaceChildren(text ? h("p", { class: "note-warn" }, text) : "");
    note.textContent = `From ${fmtTime(answer.since_ms)} to ${fmtTime(answer.until_ms)}, buckets of ${bucket.el.selectedOptions[0].textContent}.`;
    fill(root, "an-updated", `Updated ${fmtTime(Date.now(), false)}`);
  };
  const routes = async () => {
    try {
      const answer = await get("/api/v1/routes");
      setOptions(route.el, (answer.routes || []).map((r) => r.name).filter((n) => n), "(all routes)");
    } catch (error) {
      ticks = 0;
      fill(root, "an-routes-error", alertBox(error));
      return;
    }
    fill(root, "an-routes-error");
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  form.addEventListener("change", (event) => {
    if (event.target === chart.el) draw();
    else load();
  });

  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title), h("p", { class: "muted", id: "an-updated" })),
    section("an-find", "What to show", h("div", { id: "an-routes-error" }), form, note, truncated),
    h("div", { id: "an-error" }),
    section("an-over-time", "Over time", h("div", { class: "charts", id: "an-charts" })),
    section("an-totals", "Totals per group", totals.el),
  );
  return {
    async refresh() {
      const tick = ticks++;
      const slow = Number(range.el.value) >= SLOW_RANGE_MS;
      await Promise.all([
        tick % 6 === 0 ? routes() : null,
        !slow || tick % 6 === 0 || !last ? load() : null,
      ]);
    },
  };
}
