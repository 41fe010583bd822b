// The dashboard's entry: sign-in, the page chosen by the URL's hash (#/overview, #/routes,
// #/slos, #/calls, #/analytics, #/ai, #/keys, #/chaos), and the live refresh of the visible
// page every 5 s (paused while the tab is hidden, never two at once).

import { get, setToken, clearToken, token } from "./api.js";
import { h, alertBox } from "./dom.js";
import * as overview from "./overview.js";
import * as upstreams from "./upstreams.js";
import * as slos from "./slos.js";
import * as keys from "./keys.js";
import * as calls from "./calls.js";
import * as analytics from "./analytics.js";
import * as ai from "./ai.js";
import * as chaos from "./chaos.js";

const PAGES = { overview, routes: upstreams, slos, calls, analytics, ai, keys, chaos };
const DEFAULT_PAGE = "overview";
const REFRESH_MS = 5000;

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const whoBox = document.getElementById("who");
const signOutButton = document.getElementById("signout");

let who = null;
let page = null;
let pageName = null;
let timer = null;
// Bumped on every page change and sign-out: a refresh of an older page draws nothing.
let generation = 0;

function setChrome(signedIn) {
  nav.hidden = !signedIn;
  whoBox.hidden = !signedIn;
  signOutButton.hidden = !signedIn || !token();
  if (signedIn) {
    const team = who.team ? ` · team ${who.team}` : "";
    whoBox.textContent = `${who.id} (${who.role.replace("_", " ")}${team})`;
  }
}

function stopRefresh() {
  if (timer) clearTimeout(timer);
  timer = null;
}

function showSignIn(message) {
  stopRefresh();
  generation += 1;
  who = null;
  page = null;
  pageName = null;
  setChrome(false);
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true });
  const status = h("div", {}, message ? alertBox(message) : null);
  const form = h("form", { id: "signin", class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" }, "This gateway's admin API needs a token: the one named by admin.token_env, or one made with POST /api/v1/tokens. It is kept in this tab only."),
    h("div", { class: "field" }, h("label", { for: "token" }, "Admin token"), input),
    h("button", { type: "submit" }, "Sign in"),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    setToken(value);
    input.value = "";
    await signIn("That token was not accepted.");
  });
  main.replaceChildren(form);
  input.focus();
}

// Asks the API who the token is (no token: the API may be open). On 401 asks for a token,
// with `refused` as the message if a token was presented.
async function signIn(refused) {
  try {
    who = await get("/api/v1/whoami");
  } catch (error) {
    if (error.status === 401) {
      const had = token();
      clearToken();
      showSignIn(had ? refused || error.message : null);
    } else {
      main.replaceChildren(h("h1", {}, "The dashboard cannot start"), alertBox(error));
    }
    return;
  }
  setChrome(true);
  show(true);
}

function signOut() {
  clearToken();
  showSignIn(null);
}

function wanted() {
  const name = location.hash.replace(/^#\/?/, "");
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

// Mounts the page the hash names (if another is shown) and refreshes it now.
function show(first) {
  if (!who) return;
  const name = wanted();
  if (name !== pageName) {
    stopRefresh();
    generation += 1;
    pageName = name;
    page = PAGES[name].mount(main, { who });
    document.title = `${PAGES[name].title} · Levee`;
    for (const link of nav.querySelectorAll("a")) {
      if (link.dataset.page === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (!first) {
      const heading = main.querySelector("h1");
      if (heading) heading.focus();
    }
  }
  tick(generation);
}

async function tick(gen) {
  stopRefresh();
  // A hidden tab does not poll; becoming visible starts again.
  if (document.hidden) return;
  try {
    await page.refresh();
  } catch (error) {
    if (gen === generation) main.prepend(alertBox(error));
  }
  if (gen !== generation) return;
  // A token revoked meanwhile: ask again.
  if (!document.hidden) await recheck();
  if (gen === generation && who) timer = setTimeout(() => tick(gen), REFRESH_MS);
}

// Every minute, checks that the token still works (whoami is cheap).
let lastCheck = Date.now();
async function recheck() {
  if (Date.now() - lastCheck < 60000 || !token()) return;
  lastCheck = Date.now();
  try {
    who = await get("/api/v1/whoami");
  } catch (error) {
    if (error.status === 401) {
      clearToken();
      showSignIn("The token is no longer accepted: sign in again.");
    }
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && who && page && !timer) tick(generation);
});
window.addEventListener("hashchange", () => show(false));
signOutButton.addEventListener("click", signOut);
signIn(null);
