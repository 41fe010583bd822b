"""The dashboard in headless Chromium, driven by Playwright (run by tests/dashboard.rs).

    dashboard.py all | SCENARIO...

Environment: LEVEE_ADMIN_URL, LEVEE_GATEWAY_URL, LEVEE_ROOT_TOKEN (the bootstrap admin
token), LEVEE_REQUESTS_SENT (requests sent through the gateway before the run),
LEVEE_KILLED_TARGET and LEVEE_LIVE_TARGET (targets of upstream `flaky`), LEVEE_AI_KEY (an
API key of consumer ai-app, which has an LLM budget), LEVEE_CHROMIUM
(the browser), LEVEE_SCREENSHOTS=1 with LEVEE_SCREENSHOT_DIR to write screenshots.

Every scenario fails on any browser console error, uncaught page error, failed request or
answer >= 400 it did not expect. The browser is launched once; each scenario has its own
context (its own sessionStorage, so its own sign-in).
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

ADMIN = os.environ["LEVEE_ADMIN_URL"]
GATEWAY = os.environ["LEVEE_GATEWAY_URL"]
ROOT = os.environ["LEVEE_ROOT_TOKEN"]
SENT = int(os.environ["LEVEE_REQUESTS_SENT"])
KILLED = os.environ["LEVEE_KILLED_TARGET"]
LIVE = os.environ["LEVEE_LIVE_TARGET"]
AI_KEY = os.environ["LEVEE_AI_KEY"]
CHROMIUM = os.environ.get("LEVEE_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("LEVEE_SCREENSHOTS") == "1"
SHOT_DIR = os.environ.get("LEVEE_SCREENSHOT_DIR", "docs/img")
# Waits poll a condition until this many milliseconds have passed.
WAIT_MS = 10_000
LOAD_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


def http(method, url, token=None, body=None):
    """(status, parsed JSON or text) of one request outside the browser."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def root(method, path, body=None, status=None):
    got, value = http(method, ADMIN + path, ROOT, body)
    if status is not None and got != status:
        raise AssertionError(f"{method} {path}: {got} {value}")
    return value


def until(what, check):
    """Polls `check()` (truthy when done) until WAIT_MS pass; returns its last value."""
    deadline = time.monotonic() + WAIT_MS / 1000
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def gateway_status(path, key):
    status, body = http("GET", GATEWAY + path, key)
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return status, code


class Watch:
    """Collects every console error, page error, failed request and unexpected >= 400."""

    def __init__(self, page):
        self.problems = []
        self.expected = []  # (status, path) answers the scenario expects
        page.on("console", self.console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self.failed)
        page.on("response", self.response)

    def expect(self, status, path):
        self.expected.append((status, path))

    def allowed(self, status, url):
        path = url.removeprefix(ADMIN)
        return any(s == status and path.split("?")[0] == p for s, p in self.expected)

    def console(self, message):
        if message.type != "error":
            return
        loaded = LOAD_ERROR.search(message.text)
        url = (message.location or {}).get("url", "")
        if loaded and self.allowed(int(loaded.group(1)), url):
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def failed(self, request):
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def response(self, response):
        if response.status >= 400 and not self.allowed(response.status, response.url):
            self.problems.append(f"unexpected {response.status} for {response.request.method} {response.url}")

    def check(self):
        if self.problems:
            raise AssertionError("browser problems:\n  " + "\n  ".join(self.problems))


def sign_in(page, watch, token):
    """Opens the dashboard, which asks for a token (its whoami answers 401), and signs in."""
    watch.expect(401, "/api/v1/whoami")
    page.goto(ADMIN + "/")
    form = page.locator("form#signin")
    expect(form).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#nav")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def go(page, name):
    page.get_by_role("navigation", name="Pages").get_by_role("link", name=name).click()


def screenshots(page, name):
    """The page at 1280 px and at 390 px wide, when LEVEE_SCREENSHOTS=1."""
    if not SHOTS:
        return
    os.makedirs(SHOT_DIR, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        page.screenshot(path=os.path.join(SHOT_DIR, f"dashboard-{name}-{width}.jpg"), full_page=True, type="jpeg", quality=70)
    page.set_viewport_size({"width": 1280, "height": 900})


def overview(page, watch):
    """Signed in, the overview shows the requests sent, and more as they come (live refresh)."""
    sign_in(page, watch, ROOT)
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.get_by_test_id("requests-total")).to_have_text(str(SENT), timeout=WAIT_MS)
    expect(page.locator('[data-testid="route-row"][data-route="web"]')).to_be_visible()
    expect(page.locator("svg.chart").first).to_be_visible()
    for i in range(3):
        assert http("GET", f"{GATEWAY}/web/more-{i}")[0] == 200
    # The page refreshes itself every 5 s, without a reload.
    expect(page.get_by_test_id("requests-total")).to_have_text(str(SENT + 3), timeout=WAIT_MS)
    screenshots(page, "overview")


def routes(page, watch):
    """The killed target of `flaky` shows unhealthy, the other healthy."""
    sign_in(page, watch, ROOT)
    go(page, "Routes and upstreams")
    target = '[data-testid="target"][data-upstream="flaky"][data-target="{}"] [data-testid="health"]'
    expect(page.locator(target.format(KILLED))).to_have_text("unhealthy", timeout=WAIT_MS)
    expect(page.locator(target.format(LIVE))).to_have_text("healthy")
    expect(page.locator('[data-testid="config-route"][data-route="orders"]')).to_be_visible()
    screenshots(page, "routes")


def keys(page, watch):
    """A consumer and a key made in the UI; the key works through the gateway, and once
    revoked in the UI gets 401 key_revoked."""
    sign_in(page, watch, ROOT)
    go(page, "Keys and teams")
    consumers = page.locator("#new-consumer")
    consumers.get_by_label("Name").fill("dash-app")
    consumers.get_by_role("button", name="Create consumer").click()
    expect(page.locator('[data-testid="consumer-row"][data-consumer="dash-app"]')).to_be_visible(timeout=WAIT_MS)
    form = page.locator("#new-key")
    expect(form.get_by_label("Consumer").locator('option[value="dash-app"]')).to_have_count(1, timeout=WAIT_MS)
    form.get_by_label("Consumer").select_option("dash-app")
    form.get_by_label("Key name").fill("browser-key")
    form.get_by_role("button", name="Create key").click()
    secret_box = page.get_by_test_id("new-key-secret")
    expect(secret_box).to_be_visible(timeout=WAIT_MS)
    secret = secret_box.inner_text().strip()
    assert secret.startswith("lv_"), secret
    key_id = page.get_by_test_id("new-key").locator("strong").inner_text().strip()
    row = page.locator(f'[data-testid="key-row"][data-key-id="{key_id}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    until("the new key to pass", lambda: gateway_status("/api/hello", secret)[0] == 200)
    screenshots(page, "keys")
    revoke = row.locator('[data-action="revoke"]')
    revoke.click()
    expect(revoke).to_have_text("Confirm revoke")
    revoke.click()
    expect(row).to_have_attribute("data-state", "revoked", timeout=WAIT_MS)
    until("the revoked key to get 401 key_revoked",
          lambda: gateway_status("/api/hello", secret) == (401, "key_revoked"))


def subscription(page, watch):
    """A pending subscription approved in the UI lets its consumer into the service."""
    root("POST", "/api/v1/teams", {"name": "alpha"}, 201)
    root("POST", "/api/v1/consumers", {"name": "buyer"}, 201)
    secret = root("POST", "/api/v1/keys", {"consumer": "buyer", "name": "buyer-key"}, 201)["key"]
    until("the buyer's key to be known", lambda: gateway_status("/orders/1", secret) == (403, "subscription_required"))
    asked = root("POST", "/api/v1/subscriptions", {"consumer": "buyer", "service": "orders"}, 201)
    assert asked["state"] == "pending", asked
    sign_in(page, watch, ROOT)
    go(page, "Keys and teams")
    row = page.locator(f'[data-testid="subscription-row"][data-subscription-id="{asked["id"]}"]')
    expect(row).to_have_attribute("data-state", "pending", timeout=WAIT_MS)
    expect(page.locator('[data-testid="service-row"][data-service="orders"]')).to_be_visible()
    row.locator('[data-action="approve"]').click()
    expect(row).to_have_attribute("data-state", "approved", timeout=WAIT_MS)
    until("the approved consumer to get in", lambda: gateway_status("/orders/1", secret)[0] == 200)
    page.locator("#subscriptions").scroll_into_view_if_needed()
    screenshots(page, "subscriptions")


def slos(page, watch):
    """Failing traffic on route `broken` (its upstream answers 500) fires the page alert of
    SLO broken-availability (objective 99 over 1h), and the SLO page shows it firing."""
    sign_in(page, watch, ROOT)
    go(page, "SLOs")
    expect(page.locator("h1")).to_have_text("SLOs")
    panel = page.locator('[data-testid="slo"][data-slo="broken-availability"]')
    expect(panel).to_be_visible(timeout=WAIT_MS)
    expect(panel.get_by_test_id("no-alert")).to_be_visible()
    for i in range(20):
        assert http("GET", f"{GATEWAY}/broken/{i}")[0] == 500
    # Evaluated every second, the rules checked every second: the page shows it within a
    # refresh (5 s) or two.
    until("the API to report the alert firing", lambda: any(
        s["name"] == "broken-availability" and s["alerts_firing"]
        for s in root("GET", "/api/v1/slos", status=200)["slos"]))
    firing = panel.locator('[data-testid="alert-firing"][data-severity="page"]')
    expect(firing).to_be_visible(timeout=WAIT_MS)
    expect(firing).to_contain_text("since")
    expect(panel.locator('[data-testid="burn-rule"][data-long="1h"]')).to_contain_text("holds")
    expect(panel.get_by_test_id("budget-remaining")).to_contain_text("overspent")
    expect(panel.get_by_test_id("runbook")).to_contain_text("docs/runbooks/slo-burn-rate.md")
    # The alert history has it, still open; the burn-down chart is drawn from the API.
    expect(panel.locator('[data-testid="alert-record"][data-severity="page"][data-open="true"]')).to_be_visible()
    expect(panel.locator("svg.chart path.line:not(.dot)")).to_have_count(1)
    screenshots(page, "slos")


def viewer(page, watch):
    """A viewer token sees the keys page with no action button and no create form."""
    token = root("POST", "/api/v1/tokens", {"name": "dash-viewer", "role": "viewer"}, 201)["token"]
    sign_in(page, watch, token)
    expect(page.get_by_test_id("requests-total")).to_be_visible(timeout=WAIT_MS)
    go(page, "Keys and teams")
    # Rows are there (made by the earlier scenarios, or none: the empty rows say so).
    expect(page.locator("#keys tbody tr").first).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#subscriptions tbody tr").first).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#catalog tbody tr").first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("read only")).to_be_visible()
    assert page.locator("[data-action]").count() == 0, "a viewer sees an action button"
    assert page.locator("form.create, [data-testid=create-form]").count() == 0, "a viewer sees a create form"
    screenshots(page, "keys-viewer")
    # Chaos: a running experiment listed, with neither the form nor a Stop button.
    running = root("POST", "/api/v1/experiments", {
        "name": "viewer-sees-it", "route": "flaky", "duration": "2m",
        "fault": {"delay": {"percent": 0, "duration": "1ms"}},
    }, 201)
    go(page, "Chaos")
    expect(page.locator("h1")).to_have_text("Chaos")
    row = page.locator(f'[data-testid="experiment-row"][data-experiment-id="{running["id"]}"]')
    expect(row).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    expect(page.get_by_text("read only")).to_be_visible()
    assert page.locator("[data-action]").count() == 0, "a viewer sees a Stop button"
    assert page.locator("form.create, [data-testid=create-form]").count() == 0, "a viewer sees the experiment form"
    root("DELETE", f"/api/v1/experiments/{running['id']}", status=200)
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("form#signin")).to_be_visible()


def calls(page, watch):
    """The call log searched in the UI: a range in the future finds nothing; route `web` and
    status 200 list the requests sent; one chosen shows its details (its request id, as the
    API has it), which stay, like the form, through a live refresh; the limit is honoured."""
    sign_in(page, watch, ROOT)
    go(page, "Calls")
    expect(page.locator("h1")).to_have_text("Calls")
    form = page.locator("#calls-search")
    since = form.get_by_label("Since (local time)")
    # Read in the browser's time zone, sent as milliseconds since the epoch.
    since.fill("2100-01-01T00:00")
    form.get_by_role("button", name="Search").click()
    expect(page.get_by_test_id("no-call")).to_be_visible(timeout=WAIT_MS)
    since.fill("")
    form.get_by_label("Route", exact=True).fill("web")
    form.get_by_label("Status", exact=True).fill("200")
    form.get_by_role("button", name="Search").click()
    rows = page.locator('[data-testid="call-row"]')
    until("the calls of route web", lambda: rows.count() >= SENT)
    paths = rows.evaluate_all("rows => rows.map((r) => [r.dataset.path, r.dataset.status])")
    assert all(p.startswith("/web/") and s == "200" for p, s in paths), paths
    assert {f"/web/{i}" for i in range(SENT)} <= {p for p, _ in paths}, paths
    logged = root("GET", "/api/v1/calls?route=web&limit=1000", status=200)
    request_id = next(c["request_id"] for c in logged["calls"] if c["path"] == f"/web/{SENT - 1}")
    row = page.locator(f'[data-testid="call-row"][data-path="/web/{SENT - 1}"]')
    expect(row).to_have_attribute("data-request-id", request_id)
    row.get_by_role("button").click()
    details = page.get_by_test_id("call-details")
    expect(details).to_be_visible()
    expect(details.get_by_test_id("call-request-id")).to_have_text(request_id)
    expect(details).to_contain_text(f"GET /web/{SENT - 1}")
    expect(row.get_by_role("button")).to_have_attribute("aria-pressed", "true")
    # The next live refresh keeps the details, the row chosen and the search typed.
    updated = page.locator("#calls-updated").inner_text()
    expect(page.locator("#calls-updated")).not_to_have_text(updated, timeout=WAIT_MS)
    expect(details.get_by_test_id("call-request-id")).to_have_text(request_id)
    expect(row.get_by_role("button")).to_have_attribute("aria-pressed", "true")
    expect(form.get_by_label("Route", exact=True)).to_have_value("web")
    form.get_by_label("At most").fill("8")
    form.get_by_role("button", name="Search").click()
    until("8 calls", lambda: rows.count() == 8)
    expect(details.get_by_test_id("call-request-id")).to_have_text(request_id)
    screenshots(page, "calls")
    # Closed from the keyboard, the focus goes back to the call's row.
    details.get_by_role("button", name="Close the call's details").press("Enter")
    expect(details).to_be_hidden()
    expect(row.get_by_role("button")).to_be_focused()


def analytics(page, watch):
    """Aggregated by the API: by route, `web` has at least the requests sent (as many as the
    API counts), with charts; by status, 200; by model, the calls that were no LLM call."""
    sign_in(page, watch, ROOT)
    go(page, "Analytics")
    expect(page.locator("h1")).to_have_text("Analytics")
    web = page.locator('[data-testid="analytics-row"][data-group="web"]')
    expect(web).to_be_visible(timeout=WAIT_MS)
    shown = int(web.get_by_test_id("analytics-requests").inner_text().replace(",", ""))
    counted = sum(c["requests"] for c in root("GET", "/api/v1/analytics?group_by=route", status=200)["series"]
                  if c["group"] == "web")
    assert SENT <= shown <= counted, (shown, counted)
    page.get_by_label("Charts of").select_option("web")
    charts = page.locator("#an-charts figure")
    expect(charts.nth(1)).to_contain_text("route web")
    expect(charts.nth(2).locator("svg.chart path.line").first).to_be_attached()
    screenshots(page, "analytics")
    page.get_by_label("Group by").select_option("status")
    expect(page.locator('[data-testid="analytics-row"][data-group="200"]')).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#an-totals thead th").first).to_have_text("Status")
    page.get_by_label("Group by").select_option("model")
    expect(page.locator('[data-testid="analytics-row"][data-group=""]')).to_contain_text("(not an LLM call)", timeout=WAIT_MS)


def ai(page, watch):
    """Chat calls through the AI route (model `smart`: a provider answering 500, then the
    OpenAI-shaped mock) show on the AI gateway page: spend per consumer and model, the
    fallback, the answer cache's hit, and consumer ai-app's budget with its spend."""
    def chat(text):
        body = {"model": "smart", "temperature": 0, "messages": [{"role": "user", "content": text}]}
        status, answer = http("POST", f"{GATEWAY}/v1/chat/completions", AI_KEY, body)
        assert status == 200, (status, answer)
    chat("Hello")
    chat("Hello")  # the same deterministic request: answered from the cache
    chat("Hello again")
    until("the AI calls to be stored", lambda: len(root("GET", "/api/v1/calls?route=ai", status=200)["calls"]) >= 3)
    sign_in(page, watch, ROOT)
    go(page, "AI gateway")
    expect(page.locator("h1")).to_have_text("AI gateway")
    model = page.locator('[data-testid="model-row"][data-model="gpt-4o"]')
    expect(model).to_be_visible(timeout=WAIT_MS)
    expect(model.get_by_test_id("fallbacks")).not_to_have_text("0")
    expect(page.get_by_test_id("cache-hits")).to_have_text("1 of 3")
    expect(page.locator('[data-testid="spend-consumer"][data-group="ai-app"]')).to_be_visible()
    expect(page.locator('[data-testid="spend-model"][data-group="gpt-4o"]')).to_be_visible()
    budget = page.locator('[data-testid="budget-row"][data-scope="consumer"][data-name="ai-app"]')
    expect(budget).to_be_visible()
    expect(budget.get_by_test_id("spent")).not_to_have_text("$0.00")
    expect(page.get_by_test_id("spend-total")).not_to_have_text("$0.00")
    expect(page.locator("svg.chart").first).to_be_visible()
    screenshots(page, "ai")


def chaos(page, watch):
    """An experiment started in the UI on route `flaky` (all its requests aborted with 503)
    is listed running, its report counts the requests it failed within a refresh, and once
    stopped in the UI (two presses) it is aborted, in the list and in the API."""
    sign_in(page, watch, ROOT)
    go(page, "Chaos")
    expect(page.locator("h1")).to_have_text("Chaos")
    form = page.locator("#new-experiment")
    expect(form.get_by_label("Route").locator('option[value="flaky"]')).to_have_count(1, timeout=WAIT_MS)
    form.get_by_label("Name", exact=True).fill("dash-flaky-abort")
    form.get_by_label("Route", exact=True).select_option("flaky")
    form.get_by_label("Duration", exact=True).fill("10m")
    form.get_by_label("Abort %", exact=True).fill("100")
    form.get_by_label("Abort status", exact=True).fill("503")
    form.get_by_role("button", name="Start experiment").click()
    started = page.get_by_test_id("experiment-started")
    expect(started).to_be_visible(timeout=WAIT_MS)
    exp_id = started.locator("code").inner_text().strip()
    row = page.locator(f'[data-testid="experiment-row"][data-experiment-id="{exp_id}"]')
    expect(row).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    expect(row).to_contain_text("abort 100 % with 503")
    for i in range(5):
        assert gateway_status(f"/flaky/{i}", None) == (503, "fault_injected")
    # Watched live: the next refresh shows what it did.
    expect(row.get_by_test_id("experiment-report")).to_contain_text("5 aborted", timeout=WAIT_MS)
    screenshots(page, "chaos")
    stop = row.locator('[data-action="stop"]')
    stop.click()
    expect(stop).to_have_text("Confirm stop")
    stop.click()
    expect(row).to_have_attribute("data-state", "aborted", timeout=WAIT_MS)
    expect(row.get_by_test_id("experiment-reason")).to_have_text("stopped through the admin API")
    assert row.locator("[data-action]").count() == 0, "an ended experiment has a Stop button"
    ended = next(x for x in root("GET", "/api/v1/experiments", status=200)["experiments"] if x["id"] == exp_id)
    assert ended["state"] == "aborted", ended
    assert ended["report"]["aborted"] == 5, ended


SCENARIOS = {
    "overview": overview,
    "routes": routes,
    "keys": keys,
    "subscription": subscription,
    "slos": slos,
    "calls": calls,
    "analytics": analytics,
    "ai": ai,
    "chaos": chaos,
    "viewer": viewer,
}


def main(names):
    if names == ["all"]:
        names = list(SCENARIOS)
    failures = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name in names:
            started = time.monotonic()
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
            page = context.new_page()
            watch = Watch(page)
            try:
                SCENARIOS[name](page, watch)
                watch.check()
                print(f"ok   {name} ({time.monotonic() - started:.1f} s)", flush=True)
            except Exception as error:  # report every scenario, then fail
                failures += 1
                print(f"FAIL {name} ({time.monotonic() - started:.1f} s): {error}", flush=True)
                for problem in watch.problems:
                    print(f"     {problem}", flush=True)
            finally:
                context.close()
        browser.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["all"]))
