// Keys and teams (#/keys), from the management API: keys (new, revoke, rotate), consumers,
// teams, subscriptions and the service catalog. Each refresh reads keys and subscriptions;
// the other lists every sixth refresh (30 s) and after a change. A viewer gets no form and
// no action button; a team admin no team form (the API refuses what a role may not do).

import { api, get } from "./api.js";
import { h, alertBox, section, table, syncRows, fmtInt, fmtTime } from "./dom.js";
import { abilities, createForm, actionButton, setOptions } from "./forms.js";
import { consumersPanel, teamsPanel, subscriptionsPanel, catalogPanel } from "./tenants.js";

export const title = "Keys and teams";

const SOURCES = {
  keys: "/api/v1/keys?limit=100",
  consumers: "/api/v1/consumers",
  teams: "/api/v1/teams",
  subscriptions: "/api/v1/subscriptions",
  catalog: "/api/v1/catalog",
};

// Shows a secret just made, once, with a way to copy it.
function secretBox(box, made, what) {
  const code = h("code", { "data-testid": "new-key-secret", class: "secret" }, made.key);
  const copied = h("span", { class: "muted", role: "status" });
  const copy = h("button", { type: "button", class: "copy" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(made.key);
      copied.textContent = "Copied.";
    } catch {
      copied.textContent = "Select the key and copy it by hand.";
    }
  });
  box.replaceChildren(h("div", { class: "secret-box", "data-testid": "new-key" },
    h("p", {}, `${what} `, h("strong", {}, made.id), ` for ${made.consumer}. Copy the key now: it is shown only this once.`),
    h("div", { class: "secret-line" }, code, copy, copied)));
}

function keysPanel(can, reload) {
  const list = table("Keys", ["Key", "Name", "Consumer", "Prefix", "State", "#Requests", "Created", "Actions"]);
  const errors = h("div");
  const secret = h("div", { "aria-live": "polite" });
  const more = h("p", { class: "muted" });
  const form = can.write ? createForm({
    id: "new-key",
    legend: "New key",
    button: "Create key",
    fields: [
      { name: "consumer", label: "Consumer", type: "select", required: true, options: [], blank: "Choose a consumer" },
      { name: "name", label: "Key name", placeholder: "ci-deploy" },
    ],
    submit: async (values) => {
      const made = await api("POST", "/api/v1/keys", values);
      secretBox(secret, made, "Made key");
      await reload(["keys"]);
    },
  }) : null;
  const consumerSelect = form ? form.querySelector("select[name=consumer]") : null;
  const state = (k) => {
    if (k.revoked_at) return h("span", { class: "badge bad" }, "revoked");
    if (k.rotated_to) return h("span", { class: "badge warn" }, `rotated to ${k.rotated_to}`);
    if (k.expires_at && new Date(k.expires_at) < new Date()) return h("span", { class: "badge bad" }, "expired");
    return h("span", { class: "badge ok" }, "active");
  };
  const row = (k) => {
    const live = !k.revoked_at && !k.rotated_to && k.source !== "config";
    const actions = can.write && live ? [
      actionButton({
        action: "rotate", label: "Rotate", name: k.id,
        run: async () => {
          const made = await api("POST", `/api/v1/keys/${encodeURIComponent(k.id)}/rotate`, { grace: "1h" });
          secretBox(secret, made, "Rotated: new key");
          await reload(["keys"]);
        },
      }),
      actionButton({
        action: "revoke", label: "Revoke", confirm: "Confirm revoke", name: k.id,
        run: async () => {
          await api("DELETE", `/api/v1/keys/${encodeURIComponent(k.id)}`);
          await reload(["keys"]);
        },
      }),
    ] : [];
    return h("tr", { "data-testid": "key-row", "data-key-id": k.id, "data-state": k.revoked_at ? "revoked" : "active" },
      h("th", { scope: "row" }, h("code", {}, k.id)),
      h("td", {}, k.name || ""),
      h("td", {}, k.consumer),
      h("td", {}, h("code", {}, k.prefix || "")),
      h("td", { "data-testid": "key-state" }, state(k)),
      h("td", { class: "num" }, fmtInt(k.usage ? k.usage.requests : null)),
      h("td", {}, fmtTime(k.created_at)),
      h("td", { class: "actions" }, actions));
  };
  return {
    el: section("keys", "Keys", errors, form, secret, list.el, more),
    update(result) {
      if (result.status === "rejected") {
        errors.replaceChildren(alertBox(result.reason));
        return;
      }
      errors.replaceChildren();
      const keys = result.value.keys || [];
      syncRows(list.body, keys, (k) => k.id, row,
        () => h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No key yet.")));
      more.textContent = result.value.next_after ? "Showing the first 100 keys." : "";
    },
    consumers(names) {
      if (consumerSelect) setOptions(consumerSelect, names, "Choose a consumer");
    },
  };
}

export function mount(root, ctx) {
  const can = abilities(ctx.who);
  let load = async () => {};
  const reload = (names) => load(names);
  const panels = {
    keys: keysPanel(can, reload),
    consumers: consumersPanel(can, reload, (teams) => teams),
    teams: teamsPanel(can, reload),
    subscriptions: subscriptionsPanel(can, reload),
    catalog: catalogPanel(),
  };
  load = async (names) => {
    const results = await Promise.allSettled(names.map((n) => get(SOURCES[n])));
    names.forEach((name, i) => {
      const result = results[i];
      panels[name].update(result);
      if (result.status !== "fulfilled") return;
      if (name === "consumers") {
        panels.keys.consumers((result.value.consumers || []).map((c) => c.name));
      } else if (name === "teams") {
        panels.consumers.teams((result.value.teams || []).map((t) => t.name));
      }
    });
  };
  const role = ctx.who ? ctx.who.role : "unknown";
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title),
      h("p", { class: "muted" }, can.write ? `Signed in as ${role}.` : "Signed in as a viewer: read only.")),
    panels.keys.el,
    h("div", { class: "cols two" }, panels.consumers.el, panels.teams.el),
    panels.subscriptions.el,
    panels.catalog.el,
  );
  let ticks = 0;
  return {
    async refresh() {
      const all = ticks++ % 6 === 0;
      await load(all ? Object.keys(SOURCES) : ["keys", "subscriptions"]);
    },
  };
}
