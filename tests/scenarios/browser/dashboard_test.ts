import assert from "node:assert/strict";
import OpenAI from "openai";
import type { BrowserContext } from "playwright-core";
import { ADMIN_TOKEN, json, padding, startRouter } from "../../_helpers.ts";
import { startFakeStripe } from "../../_fakes/stripe.ts";
import {
  browserTest,
  ensureBundle,
  hasChromium,
  hydrated,
  launch,
  shot,
  signUp,
  usd,
  watchErrors,
} from "./_browser.ts";

const USAGE = {
  prompt_tokens: 1000,
  completion_tokens: 200,
  prompt_tokens_details: { cached_tokens: 400 },
  completion_tokens_details: { reasoning_tokens: 50 },
};

const PAGES = [
  ["overview", "/dashboard"],
  ["usage", "/dashboard/usage"],
  ["keys", "/dashboard/keys"],
  ["billing", "/dashboard/settings/billing"],
  ["audit", "/dashboard/audit"],
  ["members", "/dashboard/settings/members"],
] as const;

/** The session cookie of a browser context as a Cookie header, for API calls as that session. */
async function cookieHeader(ctx: BrowserContext) {
  const cookies = await ctx.cookies();
  const c = cookies.find((c) => c.name === "__Host-session");
  assert.ok(c, "the __Host-session cookie is set");
  assert.equal(c.httpOnly, true);
  assert.equal(c.sameSite, "Lax");
  return `${c.name}=${c.value}`;
}

browserTest(
  "dashboard: sign up, key, credit, requests, then every page agrees with the API",
  async (t, browser) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: t.url });
    const page = await ctx.newPage();
    const errors = watchErrors(page);

    // Landing and sign-up.
    const landing = await page.goto(t.url + "/");
    assert.equal(landing?.status(), 200);
    await shot(page, "landing-desktop");
    await page.goto(`${t.url}/signup`);
    await shot(page, "signup-desktop");
    await signUp(page, t, { name: "Ada", email: "ada@example.com", org: "Analytical Engines" });
    assert.equal(await usd(page, "#total-spend .money"), "0");
    assert.match(await page.locator(".empty").first().innerText(), /No usage/);
    await shot(page, "overview-empty-desktop");
    const cookie = await cookieHeader(ctx);
    const api = async (path: string) =>
      await json(await fetch(t.url + path, { headers: { cookie } }), 200);

    // Create a key; its secret is shown once and copied to the clipboard.
    await page.goto(t.url + "/dashboard/keys");
    await hydrated(page);
    await page.getByLabel("Name").fill("backend");
    await page.getByRole("button", { name: "Create key" }).click();
    const secretEl = page.locator("#new-key-secret");
    await secretEl.waitFor();
    const secret = (await secretEl.innerText()).trim();
    assert.match(secret, /^er-/);
    await page.locator("#copy-key").click();
    await page.getByRole("button", { name: "Copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
    await shot(page, "keys-created-desktop");

    // Buy credit (development mode: granted at once through POST /v1/billing/checkout).
    await page.goto(t.url + "/dashboard/settings/billing");
    await hydrated(page);
    await page.getByRole("button", { name: "Buy Starter" }).click();
    await page.waitForURL(/purchased=starter/);
    assert.equal(await usd(page, "#balance .money"), "10");
    assert.equal(await page.locator("#transactions tr[data-type='purchase']").count(), 1);

    // Requests through the OpenAI SDK with the copied key.
    t.openai.scenario = { usage: USAGE };
    const client = new OpenAI({ apiKey: secret, baseURL: `${t.url}/v1` });
    for (let i = 0; i < 3; i++) {
      await client.chat.completions.create({
        model: "openai/gpt-4o-mini",
        ...padding(),
        messages: [{ role: "user", content: `hello ${i}` }],
      });
    }
    await t.router.flush();

    // Overview: Total Spend, Market Rate and You Saved as GET /v1/usage says.
    const usage = await api("/v1/usage?group_by=key");
    assert.equal(usage.summary.requests, 3);
    assert.equal(usage.summary.cost, "0.000576");
    await page.goto(t.url + "/dashboard");
    assert.equal(await usd(page, "#total-spend .money"), usage.summary.cost);
    assert.equal(await usd(page, "#market-rate .money"), usage.summary.market_cost);
    assert.equal(await usd(page, "#you-saved .money"), usage.summary.savings);
    assert.match(await page.locator("#you-saved").innerText(), /20% below market rate/);
    assert.equal(await page.locator("#requests .metric-value").innerText(), "3");
    assert.match(await page.locator("#total-spend .metric-value").innerText(), /^\$0\.000576$/);
    const keyRow = page.locator(`#breakdown tr[data-group='${usage.breakdown[0].group}']`);
    assert.match(await keyRow.innerText(), /backend/);
    assert.equal(
      await usd(page, `#breakdown tr[data-group] .cost .money`),
      usage.breakdown[0].cost,
    );
    await shot(page, "overview-desktop");

    // Usage: summary metrics, the charts drawn, the breakdown by model.
    await page.goto(t.url + "/dashboard/usage?group_by=model");
    await page.waitForSelector(".charts[data-drawn='true']");
    assert.equal(await page.locator("#usage-requests .metric-value").innerText(), "3");
    assert.equal(await usd(page, "#usage-cost .metric-value .money"), usage.summary.cost);
    assert.equal(await usd(page, "#usage-savings .metric-value .money"), usage.summary.savings);
    // The spend chart has painted pixels (a blank canvas is all transparent).
    const painted = await page.evaluate(() => {
      const c = document.getElementById("chart-spend") as HTMLCanvasElement;
      const d = c.getContext("2d")!.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
      return n;
    });
    assert.ok(painted > 500, `the spend chart is drawn (${painted} pixels)`);
    const byModel = await api("/v1/usage?group_by=model");
    assert.equal(
      await usd(page, "#breakdown tr[data-group='gpt-4o-mini'] .cost .money"),
      byModel.breakdown[0].cost,
    );
    await shot(page, "usage-desktop");

    // Keys: the key's spend as GET /v1/keys says.
    const keys = await api("/v1/keys");
    const backend = keys.data.find((k: { name: string }) => k.name === "backend");
    assert.equal(backend.spend, "0.000576");
    await page.goto(t.url + "/dashboard/keys");
    await hydrated(page);
    assert.equal(await usd(page, `tr[data-key-id='${backend.id}'] .key-spend`), backend.spend);
    // Edit the limit, disable, enable.
    const row = page.locator(`tr[data-key-id='${backend.id}']`);
    await row.getByRole("button", { name: "Edit limit" }).click();
    await page.locator(".edit-row input[name='credit_limit']").fill("5");
    await page.getByRole("button", { name: "Save limit" }).click();
    await page.locator(".edit-row").waitFor({ state: "detached" });
    assert.match(await row.innerText(), /\$5\.00/);
    await row.getByRole("button", { name: "Disable" }).click();
    await row.getByText("Disabled").waitFor();
    const disabled = await api(`/v1/keys/${backend.id}`);
    assert.equal(disabled.disabled, true);
    assert.equal(disabled.credit_limit, "5");
    await row.getByRole("button", { name: "Enable" }).click();
    await row.getByText("Active").waitFor();
    await shot(page, "keys-desktop");
    // Revoke takes a second, explicit click; the revoked key stops working at once.
    await page.getByLabel("Name").fill("temporary");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.locator("#new-key-secret", { hasText: "er-" }).waitFor();
    const tempSecret = (await page.locator("#new-key-secret").innerText()).trim();
    assert.notEqual(tempSecret, secret);
    const temp = page.locator("#keys-table tbody tr", { hasText: "temporary" });
    await temp.getByRole("button", { name: "Revoke" }).click();
    await temp.getByRole("button", { name: "Confirm revoke" }).click();
    await temp.waitFor({ state: "detached" });
    const revoked = await fetch(`${t.url}/v1/key`, {
      headers: { authorization: `Bearer ${tempSecret}` },
    });
    await json(revoked, 401);
    // Per-key usage, as GET /v1/keys/{id}/usage.
    await row.getByRole("link", { name: "Usage of backend" }).click();
    await page.waitForURL(/\/dashboard\/usage\?key_id=/);
    const keyUsage = await api(`/v1/keys/${backend.id}/usage`);
    assert.equal(keyUsage.summary.requests, 3);
    assert.equal(await usd(page, "#usage-cost .metric-value .money"), keyUsage.summary.cost);
    const mgmtKey = keys.data.find((k: { scope: string }) => k.scope === "management");
    await page.goto(`${t.url}/dashboard/usage?key_id=${mgmtKey.id}`);
    assert.equal(await page.locator("#usage-requests .metric-value").innerText(), "0");

    // Billing: the purchase and the three debits, balance as GET /v1/credits.
    const credits = await api("/v1/credits");
    await page.goto(t.url + "/dashboard/settings/billing");
    await hydrated(page);
    assert.equal(await usd(page, "#balance .money"), credits.balance);
    assert.equal(credits.balance, "9.999424");
    assert.equal(await page.locator("#transactions tr[data-type='purchase']").count(), 1);
    assert.equal(await page.locator("#transactions tr[data-type='usage_debit']").count(), 3);
    const tx = await api("/v1/transactions");
    for (const e of tx.data) {
      assert.equal(await usd(page, `#transactions tr[data-id='${e.id}'] .amount .money`), e.amount);
    }
    await shot(page, "billing-desktop");

    // Audit: the rows of GET /v1/audit, and a CSV export that matches them.
    const audit = await api("/v1/audit");
    assert.equal(audit.data.length, 3);
    await page.goto(t.url + "/dashboard/audit");
    const ids = await page.locator("#audit-table tbody tr").evaluateAll((rows) =>
      rows.map((r) => (r as HTMLElement).dataset.requestId)
    );
    assert.deepEqual(ids, audit.data.map((r: { request_id: string }) => r.request_id));
    await shot(page, "audit-desktop");
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.locator("#export-csv").click(),
    ]);
    const csv = await Deno.readTextFile((await download.path())!);
    const lines = csv.trimEnd().split("\r\n");
    assert.match(lines[0], /^timestamp,request_id,key_id,key_name,provider,model,/);
    assert.equal(lines.length, 4);
    const header = lines[0].split(",");
    for (const [i, r] of audit.data.entries()) {
      const cells = lines[i + 1].split(",");
      assert.equal(cells[header.indexOf("request_id")], r.request_id);
      assert.equal(cells[header.indexOf("cost")], r.cost);
      assert.equal(cells[header.indexOf("market_cost")], r.market_cost);
    }
    // Filtering by a status nobody got leaves the table empty.
    await page.goto(t.url + "/dashboard/audit?status=500");
    assert.equal(await page.locator("#audit-table").count(), 0);
    await page.goto(t.url + "/dashboard/settings/members");
    await shot(page, "members-desktop");

    // Cross-origin writes are refused: the API and the dashboard's own forms.
    const csrf = await page.locator("input[name='_csrf']").first().inputValue();
    const evil = await fetch(`${t.url}/v1/keys`, {
      method: "POST",
      headers: { cookie, origin: "http://evil.example", "x-csrf-token": csrf },
      body: JSON.stringify({ name: "stolen" }),
    });
    await json(evil, 403);
    const evilForm = await fetch(`${t.url}/dashboard/settings/members`, {
      method: "POST",
      headers: {
        cookie,
        origin: "http://evil.example",
        "content-type": "application/x-www-form-urlencoded",
      },
      body: new URLSearchParams({ _csrf: csrf, email: "ada@example.com" }),
    });
    assert.equal(evilForm.status, 403);
    await evilForm.body?.cancel();
    const noToken = await fetch(`${t.url}/v1/billing/checkout`, {
      method: "POST",
      headers: { cookie, origin: t.url, "content-type": "application/json" },
      body: JSON.stringify({ package_id: "starter" }),
    });
    await json(noToken, 403);
    assert.equal((await api("/v1/credits")).balance, "9.999424", "nothing was bought");

    // Phone width: every page still renders.
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 },
      storageState: await ctx.storageState(),
    });
    const phonePage = await phone.newPage();
    const phoneErrors = watchErrors(phonePage);
    for (const [name, path] of PAGES) {
      await phonePage.goto(t.url + path);
      await hydrated(phonePage);
      if (name === "usage") await phonePage.waitForSelector(".charts[data-drawn='true']");
      const overflow = await phonePage.evaluate(() =>
        document.documentElement.scrollWidth - document.documentElement.clientWidth
      );
      await shot(phonePage, `${name}-phone`);
      assert.ok(overflow <= 0, `${name} fits a phone's width (overflow ${overflow}px)`);
    }
    await phone.close();

    // Another account sees none of this.
    const other = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const otherPage = await other.newPage();
    await signUp(otherPage, t, { name: "Bob", email: "bob@example.com", org: "Bob's Bakery" });
    assert.equal(await usd(otherPage, "#total-spend .money"), "0");
    await otherPage.goto(t.url + "/dashboard/keys");
    assert.ok(!(await otherPage.content()).includes(backend.id));
    await otherPage.goto(t.url + "/dashboard/audit");
    assert.equal(await otherPage.locator("#audit-table").count(), 0);
    const otherCookie = await cookieHeader(other);
    const peek = await fetch(`${t.url}/v1/keys/${backend.id}`, {
      headers: { cookie: otherCookie },
    });
    await json(peek, 404);
    // Until Bob adds Ada as a member of his account: then she may switch to it.
    await otherPage.goto(t.url + "/dashboard/settings/members");
    await otherPage.getByLabel("Email of a signed-up user").fill("ada@example.com");
    await otherPage.getByRole("button", { name: "Add member" }).click();
    await otherPage.getByText("ada@example.com is now a member.").waitFor();
    assert.equal(await otherPage.locator("#members tbody tr").count(), 2);
    await other.close();

    // Sign out, then sign in again (rotating the session).
    await page.goto(t.url + "/dashboard");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.waitForURL(/\/signin/);
    const old = await fetch(`${t.url}/v1/credits`, { headers: { cookie } });
    await json(old, 401);
    await page.getByLabel("Email").fill("ada@example.com");
    await page.getByLabel("Password").fill("wrong password!");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("The email or password is wrong.").waitFor();
    await shot(page, "signin-error-desktop");
    await page.getByLabel("Password").fill("a long password 123");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(`${t.url}/dashboard`);
    assert.notEqual(await cookieHeader(ctx), cookie, "a new session at sign-in");
    await page.getByLabel("Account").selectOption({ label: "Bob's Bakery" });
    await page.getByRole("button", { name: "Switch" }).click();
    await page.waitForURL(`${t.url}/dashboard`);
    assert.equal(await page.locator("#account-switch option:checked").innerText(), "Bob's Bakery");
    assert.equal(await usd(page, "#total-spend .money"), "0");
    // A member does not manage members.
    await page.goto(t.url + "/dashboard/settings/members");
    assert.equal(await page.getByRole("button", { name: "Add member" }).count(), 0);

    assert.deepEqual(errors, []);
    assert.deepEqual(phoneErrors, []);
    await ctx.close();
    await t.assertBooks();
  },
);

browserTest(
  "dashboard admin: the operator sees accounts, adjusts with a reason, checks the books",
  async (t, browser) => {
    const acct = await t.account("2");
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchErrors(page);
    await page.goto(t.url + "/dashboard/admin");
    await page.waitForURL(/\/dashboard\/admin\/signin/);
    await shot(page, "admin-signin-desktop");
    await page.getByLabel("Admin token").fill("not the token at all");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("That token is wrong.").waitFor();
    await page.getByLabel("Admin token").fill(ADMIN_TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(`${t.url}/dashboard/admin`);
    const row = page.locator(`#accounts tr[data-account-id='${acct.id}']`);
    assert.equal(await row.locator(".money").first().getAttribute("data-usd"), "2");
    await page.getByRole("button", { name: "Check the books" }).click();
    await page.getByText("The books balance.").waitFor();
    await shot(page, "admin-accounts-desktop");

    await row.getByRole("link").click();
    await page.waitForURL(new RegExp(`/dashboard/admin/accounts/${acct.id}$`));
    const adj = page.locator("form", {
      has: page.getByRole("button", { name: "Record adjustment" }),
    });
    await adj.getByLabel(/Amount/).fill("-0.5");
    await adj.getByLabel("Reason").fill("goodwill correction");
    await adj.getByRole("button", { name: "Record adjustment" }).click();
    await page.getByText("The adjustment is recorded.").waitFor();
    assert.equal(await usd(page, "#admin-balance .money"), "1.5");
    const ref = page.locator("form", { has: page.getByRole("button", { name: "Record refund" }) });
    await ref.getByLabel(/Amount/).fill("0.25");
    await ref.getByLabel("Reason").fill("request billed in error");
    await ref.getByRole("button", { name: "Record refund" }).click();
    await page.getByText("The refund is recorded.").waitFor();
    assert.equal(await usd(page, "#admin-balance .money"), "1.75");
    await shot(page, "admin-account-desktop");
    const credits = await json(await t.call(acct.mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "1.75");
    const tx = await json(await t.call(acct.mgmt, "GET", "/v1/transactions"), 200);
    assert.deepEqual(
      tx.data.slice(0, 2).map((
        e: { type: string; description: string },
      ) => [e.type, e.description]),
      [
        ["refund", "request billed in error"],
        ["adjustment", "goodwill correction"],
      ],
    );
    // A user session is not the operator.
    const anon = await fetch(`${t.url}/dashboard/admin`, { redirect: "manual" });
    assert.equal(anon.status, 303);
    await anon.body?.cancel();
    assert.deepEqual(errors, []);
    await t.assertBooks();
  },
);

Deno.test({
  name: "dashboard billing in production: a click goes to Stripe Checkout, the webhook credits",
  ignore: !hasChromium,
}, async () => {
  await ensureBundle();
  const stripe = startFakeStripe();
  const t = await startRouter({
    env: {
      STRIPE_SECRET_KEY: "sk_test_router",
      STRIPE_WEBHOOK_SECRET: "whsec_test_dashboard_0123456789",
      STRIPE_API_BASE: stripe.url,
    },
  });
  const browser = await launch();
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    // Stripe's hosted page is not reachable here: stand in for it.
    await ctx.route(
      "https://checkout.stripe.test/**",
      (route) =>
        route.fulfill({ contentType: "text/html", body: "<title>Stripe Checkout</title>" }),
    );
    const page = await ctx.newPage();
    const errors = watchErrors(page);
    await signUp(page, t, { name: "Cy", email: "cy@example.com", org: "Cyber" });
    await page.goto(t.url + "/dashboard/settings/billing");
    await hydrated(page);
    assert.match(await page.locator("body").innerText(), /taken to Stripe Checkout/);
    await page.getByRole("button", { name: "Buy Team" }).click();
    await page.waitForURL(/^https:\/\/checkout\.stripe\.test\/c\/pay\/cs_/);
    const sessionId = page.url().split("/").at(-1)!;
    const session = stripe.sessions.get(sessionId)!;
    assert.ok(String(session.success_url).startsWith(`${t.url}/dashboard/settings/billing`));
    // Nothing is credited before Stripe says the session is paid.
    const cookie = await cookieHeader(ctx);
    const before = await json(await fetch(`${t.url}/v1/credits`, { headers: { cookie } }), 200);
    assert.equal(before.balance, "0");
    const event = stripe.event("checkout.session.completed", stripe.complete(sessionId));
    const { payload, header } = await stripe.sign(event, "whsec_test_dashboard_0123456789");
    const hook = await fetch(`${t.url}/v1/stripe/webhook`, {
      method: "POST",
      headers: { "content-type": "application/json", "stripe-signature": header },
      body: payload,
    });
    assert.equal(hook.status, 200);
    await hook.body?.cancel();
    await page.goto(String(session.success_url).replace("{CHECKOUT_SESSION_ID}", sessionId));
    await page.getByText("Payment received").waitFor();
    assert.equal(await usd(page, "#balance .money"), "25");
    assert.equal(await page.locator("#transactions tr[data-type='purchase']").count(), 1);
    await shot(page, "billing-production-desktop");
    assert.deepEqual(errors, []);
    await ctx.close();
    await t.assertBooks();
  } finally {
    await browser.close();
    await t.close();
    await stripe.close();
  }
});
