// Routes and upstreams (#/routes): every target's health, breaker, ejection, load and
// latency (GET /api/v1/upstreams, each refresh) and the routes in match order
// (GET /api/v1/routes).

import { get } from "./api.js";
import { h, alertBox, fill, section, table, syncRows, fmtInt, fmtMs } from "./dom.js";

export const title = "Routes and upstreams";

function badge(ok, yes, no) {
  return h("span", { class: `badge ${ok ? "ok" : "bad"}` }, ok ? yes : no);
}

function targetRow(upstream, t) {
  const circuitOk = t.circuit === "closed";
  return h("tr", { "data-testid": "target", "data-upstream": upstream, "data-target": t.addr },
    h("th", { scope: "row" }, t.addr),
    h("td", { "data-testid": "health" }, badge(t.healthy, "healthy", "unhealthy")),
    h("td", {}, t.health_check_passing ? "passing" : "failing"),
    h("td", { "data-testid": "circuit" }, h("span", { class: `badge ${circuitOk ? "ok" : "bad"}` }, t.circuit.replace("_", " "))),
    h("td", { "data-testid": "ejected" }, t.ejected ? h("span", { class: "badge bad" }, "ejected") : "no"),
    h("td", { class: "num", "data-testid": "inflight" }, fmtInt(t.inflight)),
    h("td", { class: "num", "data-testid": "ewma" }, fmtMs(t.ewma_ms)),
    h("td", { class: "num" }, fmtInt(t.weight)));
}

function upstreamPanel(u) {
  const targets = table(`Targets of ${u.name}`, ["Target", "Health", "Health check", "Breaker", "Ejected", "#In flight", "#EWMA latency", "#Weight"]);
  syncRows(targets.body, u.targets, (t) => t.addr, (t) => targetRow(u.name, t));
  const healthy = u.targets.filter((t) => t.healthy).length;
  const cap = u.max_concurrent ? ` of ${fmtInt(u.max_concurrent)}` : "";
  return h("section", { class: "panel", "data-testid": "upstream", "data-upstream": u.name, "aria-label": `Upstream ${u.name}` },
    h("h3", {}, u.name),
    h("p", { class: "muted" }, `${healthy} of ${u.targets.length} targets healthy · ${fmtInt(u.inflight)}${cap} requests in flight`),
    targets.el);
}

function matchText(match) {
  if (!match || typeof match !== "object") return "any";
  return Object.entries(match)
    .filter(([, v]) => v !== null && v !== undefined && !(Array.isArray(v) && v.length === 0))
    .map(([k, v]) => `${k.replace("_", " ")} ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ") || "any";
}

function routeRow(r) {
  const auth = typeof r.auth === "string" ? r.auth : r.auth ? JSON.stringify(r.auth) : "none";
  return h("tr", { "data-testid": "config-route", "data-route": r.name },
    h("th", { scope: "row" }, r.name),
    h("td", {}, matchText(r.match)),
    h("td", {}, r.llm ? "LLM" : r.upstream || "–"),
    h("td", {}, auth));
}

export function mount(root) {
  const routes = table("Routes in match order", ["Route", "Match", "Upstream", "Auth"]);
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title)),
    h("div", { id: "rt-error" }),
    section("rt-upstreams", "Upstreams", h("div", { id: "rt-upstream-list", class: "stack" })),
    section("rt-routes", "Routes", h("div", { id: "rt-routes-error" }), routes.el),
  );
  let ticks = 0;
  return {
    async refresh() {
      // The routes change only with the config: read them every sixth refresh (30 s).
      const [upstreams, config] = await Promise.allSettled([
        get("/api/v1/upstreams"),
        ticks++ % 6 === 0 ? get("/api/v1/routes") : Promise.resolve(null),
      ]);
      if (upstreams.status === "fulfilled") {
        fill(root, "rt-error");
        const list = upstreams.value.upstreams || [];
        fill(root, "rt-upstream-list", list.length ? list.map(upstreamPanel) : h("p", { class: "muted" }, "No upstream is configured."));
      } else {
        fill(root, "rt-error", alertBox(upstreams.reason));
      }
      if (config.status === "rejected") {
        ticks = 0;
        fill(root, "rt-routes-error", alertBox(config.reason));
      } else if (config.value) {
        fill(root, "rt-routes-error");
        syncRows(routes.body, config.value.routes || [], (r) => r.name, routeRow);
      }
    },
  };
}
