// The AI gateway (#/ai): spend per consumer, model and team over a chosen range, cost and
// tokens over time, the budgets with what is left of them, the answer cache's hit rate and
// provider fallbacks.
//
// Sources: GET /api/v1/llm (this process since it started: per model tokens, cost and
// fallbacks, the cache, budgets) on every refresh; GET /api/v1/analytics grouped by model
// and by consumer (the call log, the whole fleet in cluster mode) and GET /api/v1/usage by
// team (the management store's keys) at most every 30 s, since they read stored rows.

import { get } from "./api.js";
import { h, alertBox, fill, section, table, syncRows, fmtInt, fmtNum, fmtPct, fmtTime } from "./dom.js";
import { lineChart } from "./chart.js";

export const title = "AI gateway";

const RANGES = [
  { value: "24h", label: "Last 24 hours", ms: 86400000, bucket: "1h" },
  { value: "7d", label: "Last 7 days", ms: 7 * 86400000, bucket: "1d" },
  { value: "30d", label: "Last 30 days", ms: 30 * 86400000, bucket: "1d" },
];
// The stored rows are read again at most this often.
const STORED_EVERY_MS = 30000;

function fmtUsd(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return `$${n.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: n < 1 ? 6 : 2 })}`;
}

function card(label, value, testid) {
  return h("div", { class: "card" },
    h("span", { class: "card-label" }, label),
    h("span", { class: "card-value", "data-testid": testid }, value));
}

// Sums analytics cells per group: calls, tokens, cost (LLM calls only: a group without
// tokens or cost is left out).
function perGroup(cells) {
  const groups = new Map();
  for (const c of cells) {
    const key = c.group ?? "";
    const g = groups.get(key) || { group: c.group, requests: 0, errors: 0, prompt: 0, completion: 0, cost: 0 };
    g.requests += c.requests;
    g.errors += c.errors;
    g.prompt += c.prompt_tokens;
    g.completion += c.completion_tokens;
    g.cost += c.cost_usd;
    groups.set(key, g);
  }
  return Array.from(groups.values())
    .filter((g) => g.prompt + g.completion > 0 || g.cost > 0)
    .sort((a, b) => b.cost - a.cost || b.prompt + b.completion - (a.prompt + a.completion));
}

// Cost and tokens per bucket over every group.
function overTime(cells) {
  const buckets = new Map();
  for (const c of cells) {
    const b = buckets.get(c.bucket_start_ms) || { t: c.bucket_start_ms, cost: 0, tokens: 0 };
    b.cost += c.cost_usd;
    b.tokens += c.prompt_tokens + c.completion_tokens;
    buckets.set(c.bucket_start_ms, b);
  }
  return Array.from(buckets.values()).sort((a, b) => a.t - b.t);
}

function spendRow(kind) {
  return (g) => h("tr", { "data-testid": `spend-${kind}`, "data-group": g.group ?? "" },
    h("th", { scope: "row" }, g.group ?? h("span", { class: "muted" }, kind === "consumer" ? "(anonymous)" : "(none)")),
    h("td", { class: "num" }, fmtInt(g.requests)),
    h("td", { class: "num" }, fmtInt(g.prompt)),
    h("td", { class: "num" }, fmtInt(g.completion)),
    h("td", { class: "num", "data-testid": "cost" }, fmtUsd(g.cost)));
}

function teamRow(g) {
  return h("tr", { "data-testid": "spend-team", "data-group": g.group ?? "" },
    h("th", { scope: "row" }, g.group ?? h("span", { class: "muted" }, "(no team)")),
    h("td", { class: "num" }, fmtInt(g.requests)),
    h("td", { class: "num" }, fmtInt(g.tokens)),
    h("td", { class: "num" }, fmtUsd(g.period_cost_usd)),
    h("td", { class: "num" }, fmtUsd(g.cost_usd)));
}

function modelRow(m) {
  return h("tr", { "data-testid": "model-row", "data-model": m.model, "data-provider": m.provider },
    h("th", { scope: "row" }, m.model),
    h("td", {}, m.provider),
    h("td", { class: "num" }, fmtInt(m.prompt_tokens)),
    h("td", { class: "num" }, fmtInt(m.completion_tokens)),
    h("td", { class: "num" }, fmtUsd(m.cost_usd)),
    h("td", { class: "num", "data-testid": "fallbacks" }, fmtInt(m.fallbacks)));
}

function budgetRow(b) {
  const left = typeof b.remaining_usd === "number" && b.usd > 0 ? b.remaining_usd / b.usd : null;
  return h("tr", { "data-testid": "budget-row", "data-scope": b.scope, "data-name": b.name },
    h("th", { scope: "row" }, b.name, b.consumer ? h("span", { class: "muted small" }, ` (${b.consumer})`) : null),
    h("td", {}, b.scope),
    h("td", { class: "num" }, `${fmtUsd(b.usd)} / ${b.period}`),
    h("td", { class: "num", "data-testid": "spent" }, b.spent_usd === undefined ? "in Redis" : fmtUsd(b.spent_usd)),
    h("td", {}, left === null
      ? h("span", { class: "muted" }, "–")
      : [h("meter", { min: 0, max: 1, low: 0.1, high: 0.3, optimum: 1, value: left, "aria-label": `${b.name}: budget left` }),
        ` ${fmtUsd(b.remaining_usd)} (${fmtPct(left, 0)})`]));
}

function cards(llm, spend) {
  const cache = llm.cache || {};
  const fallbacks = (llm.models || []).reduce((n, m) => n + m.fallbacks, 0);
  return [
    card("Spend in range", spend ? fmtUsd(spend.cost) : "–", "spend-total"),
    card("Tokens in range", spend ? fmtInt(spend.tokens) : "–", "tokens-total"),
    card("Cache hit rate", cache.hit_rate === undefined ? "no lookups" : fmtPct(cache.hit_rate, 1), "cache-hit-rate"),
    card("Cache hits", `${fmtInt(cache.hits)} of ${fmtInt((cache.hits || 0) + (cache.misses || 0))}`, "cache-hits"),
    card("Provider fallbacks", fmtInt(fallbacks), "fallbacks-total"),
  ];
}

export function mount(root) {
  const consumers = table("Spend per consumer", ["Consumer", "#Calls", "#Prompt tokens", "#Completion tokens", "#Cost"]);
  const models = table("Spend per model in range", ["Model", "#Calls", "#Prompt tokens", "#Completion tokens", "#Cost"]);
  const teams = table("Spend per team", ["Team", "#Requests", "#Tokens", "#This period", "#All time"]);
  const since = table("Models since this gateway started", ["Model", "Provider", "#Prompt tokens", "#Completion tokens", "#Cost", "#Fallbacks"]);
  const budgets = table("Budgets", ["Budget", "Scope", "#Budget", "#Spent", "Left"]);
  const range = h("select", { id: "ai-range", name: "range" }, RANGES.map((r) => h("option", { value: r.value }, r.label)));
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title), h("p", { class: "muted", id: "ai-updated" })),
    h("div", { class: "toolbar" }, h("div", { class: "field" }, h("label", { for: "ai-range" }, "Range"), range)),
    h("div", { id: "ai-error" }),
    h("div", { class: "cards", id: "ai-cards" }),
    section("ai-time", "Cost and tokens over time", h("div", { class: "charts", id: "ai-charts" })),
    h("div", { class: "cols" },
      section("ai-consumers", "Spend per consumer", consumers.el),
      section("ai-models", "Spend per model", models.el)),
    h("div", { class: "cols" },
      section("ai-teams", "Spend per team (stored keys)", h("div", { id: "ai-teams-error" }), teams.el),
      section("ai-budgets", "Budgets", budgets.el)),
    section("ai-since", "Models since this gateway started", since.el),
  );
  const empty = (text, cols) => () => h("tr", {}, h("td", { colspan: cols, class: "muted" }, text));
  let stored = null;
  let readAt = 0;
  let readRange = null;

  async function readStored() {
    const chosen = RANGES.find((r) => r.value === range.value) || RANGES[0];
    const q = `since=${Date.now() - chosen.ms}&bucket=${chosen.bucket}`;
    const [byModel, byConsumer] = await Promise.all([
      get(`/api/v1/analytics?group_by=model&${q}`),
      get(`/api/v1/analytics?group_by=consumer&${q}`),
    ]);
    let byTeam = null;
    let teamError = null;
    try {
      byTeam = await get("/api/v1/usage?group_by=team");
    } catch (error) {
      teamError = error;
    }
    return { byModel, byConsumer, byTeam, teamError, range: chosen.value };
  }

  async function refresh() {
    let llm;
    try {
      llm = await get("/api/v1/llm");
      if (!stored || readRange !== range.value || Date.now() - readAt > STORED_EVERY_MS) {
        readRange = range.value;
        stored = await readStored();
        readAt = Date.now();
      }
    } catch (error) {
      fill(root, "ai-error", alertBox(error));
      return;
    }
    fill(root, "ai-error", stored.byModel.truncated
      ? h("p", { class: "muted" }, "The range holds more calls than one query reads: the figures cover its first 200,000 calls.")
      : null);
    const points = overTime(stored.byModel.series || []);
    const modelSpend = perGroup(stored.byModel.series || []);
    const spend = modelSpend.reduce((t, g) => ({ cost: t.cost + g.cost, tokens: t.tokens + g.prompt + g.completion }), { cost: 0, tokens: 0 });
    fill(root, "ai-cards", cards(llm, spend));
    fill(root, "ai-charts", lineChart("Cost and tokens per bucket", points.map((p) => p.t), [
      { label: "Cost", cls: "s1", values: points.map((p) => p.cost), format: fmtUsd },
      { label: "Tokens", cls: "s2", values: points.map((p) => p.tokens), format: (v) => fmtNum(v, 0) },
    ]));
    syncRows(consumers.body, perGroup(stored.byConsumer.series || []), (g) => g.group ?? "", spendRow("consumer"), empty("No LLM call in this range.", 5));
    syncRows(models.body, modelSpend, (g) => g.group ?? "", spendRow("model"), empty("No LLM call in this range.", 5));
    fill(root, "ai-teams-error", stored.teamError ? alertBox(stored.teamError) : null);
    const teamGroups = stored.byTeam ? stored.byTeam.groups || [] : [];
    syncRows(teams.body, teamGroups, (g) => g.group ?? "", teamRow, empty("No stored key has spent anything.", 5));
    syncRows(budgets.body, llm.budgets || [], (b) => `${b.scope}/${b.name}`, budgetRow, empty("No LLM budget is set (consumers, keys or teams).", 5));
    syncRows(since.body, llm.models || [], (m) => `${m.provider}/${m.model}`, modelRow, empty("No LLM call since the start.", 6));
    fill(root, "ai-updated", `Updated ${fmtTime(Date.now(), false)}`);
  }

  range.addEventListener("change", () => {
    stored = null;
    refresh().catch(() => {});
  });
  return { refresh };
}
