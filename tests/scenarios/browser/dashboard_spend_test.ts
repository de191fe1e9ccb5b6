import assert from "node:assert/strict";
import type { BrowserContext } from "playwright-core";
import { json } from "../../_helpers.ts";
import { parseCsv } from "../../_csv.ts";
import { startReceiver } from "../../_fakes/receiver.ts";
import { browserTest, hydrated, shot, signUp, usd, watchErrors } from "./_browser.ts";

/** A fetch as the browser context's session (GETs need no CSRF token). */
async function asSession(ctx: BrowserContext, url: string) {
  const c = (await ctx.cookies()).find((c) => c.name === "__Host-session");
  assert.ok(c, "signed in");
  return await fetch(url, { headers: { cookie: `${c.name}=${c.value}` } });
}

browserTest(
  "Settings › Webhooks: add an endpoint (secret shown once), send a test event a loopback receiver verifies",
  async (t, browser) => {
    const rx = startReceiver();
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: t.url });
    const page = await ctx.newPage();
    const errors = watchErrors(page);
    try {
      await signUp(page, t, { email: "hooks@example.com" });
      await page.getByRole("link", { name: "Webhooks" }).click();
      await page.waitForURL(`${t.url}/dashboard/settings/webhooks`);
      await hydrated(page);
      assert.match(await page.locator(".empty").innerText(), /No endpoints yet/);

      await page.getByLabel("Endpoint URL").fill(rx.url);
      await page.getByRole("button", { name: "Add endpoint" }).click();
      const secretEl = page.locator("#new-webhook-secret");
      await secretEl.waitFor();
      rx.secret = (await secretEl.innerText()).trim();
      assert.match(rx.secret, /^whsec_/);
      await page.locator("#copy-webhook-secret").click();
      await page.getByRole("button", { name: "Copied" }).waitFor();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), rx.secret);
      await shot(page, "webhooks-created-desktop");

      // Shown once: not after a reload.
      await page.reload();
      await hydrated(page);
      assert.equal(await page.locator("#new-webhook-secret").count(), 0);
      assert.ok(!(await page.content()).includes(rx.secret));
      const row = page.locator("#webhooks-table tr[data-endpoint-id]");
      assert.equal(await row.count(), 1);
      assert.match(await row.innerText(), /credits\.purchased[\s\S]*credits\.refunded/);
      const endpointId = await row.getAttribute("data-endpoint-id");

      await page.getByRole("button", { name: "Send test event" }).click();
      await page.getByText("Test event delivered: HTTP 204.").waitFor();
      assert.equal(rx.received.length, 1);
      const got = rx.received[0];
      assert.ok(got.verified.ok, JSON.stringify(got.verified));
      assert.equal(got.verified.event.type, "webhook.test");
      const logRow = page.locator(`#deliveries-${endpointId} tr[data-state='delivered']`);
      assert.equal(await logRow.count(), 1);
      assert.equal(await logRow.getAttribute("data-webhook-id"), got.headers["webhook-id"]);
      assert.match(await logRow.innerText(), /webhook\.test[\s\S]*HTTP 204/);
      await shot(page, "webhooks-desktop");

      // A purchase reaches the endpoint too.
      await page.goto(`${t.url}/dashboard/settings/billing`);
      await hydrated(page);
      await page.getByRole("button", { name: "Buy Starter" }).click();
      await page.waitForURL(/purchased=starter/);
      const [, purchase] = await rx.waitFor(2);
      assert.ok(purchase.verified.ok);
      assert.equal(purchase.verified.event.type, "credits.purchased");
      assert.equal(purchase.verified.event.data.amount, "10");

      // Phone width, then delete (with its confirmation).
      await page.goto(`${t.url}/dashboard/settings/webhooks`);
      await page.setViewportSize({ width: 390, height: 844 });
      await hydrated(page);
      await shot(page, "webhooks-phone");
      await page.getByRole("button", { name: "Delete" }).click();
      await page.getByRole("button", { name: "Confirm delete" }).click();
      await page.locator(".empty").waitFor();
      const api = await json(await asSession(ctx, `${t.url}/v1/webhooks`), 200);
      assert.deepEqual(api.data, []);
      assert.deepEqual(errors, []);
    } finally {
      await ctx.close();
      await rx.close();
    }
  },
);

browserTest(
  "Settings › Billing: a month's printable statement and its CSV download agree with the API",
  async (t, browser) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    const errors = watchErrors(page);
    try {
      await signUp(page, t, { email: "finance@example.com" });
      await page.goto(`${t.url}/dashboard/settings/billing`);
      await hydrated(page);
      await page.getByRole("button", { name: "Buy Team" }).click();
      await page.waitForURL(/purchased=team/);
      const month = new Date().toISOString().slice(0, 7);
      const api = await json(await asSession(ctx, `${t.url}/v1/statements/${month}`), 200);
      assert.equal(api.purchases, "25");

      await page.locator(`#statements li[data-month='${month}'] a`).first().click();
      await page.waitForURL(`${t.url}/dashboard/settings/billing/statements/${month}`);
      await hydrated(page);
      assert.equal(await usd(page, "#opening td"), api.opening_balance);
      assert.equal(await usd(page, "#purchases td"), "25");
      assert.equal(await usd(page, "#closing td"), api.closing_balance);
      await shot(page, "statement-desktop");
      // Printed, the statement stands alone.
      await page.emulateMedia({ media: "print" });
      assert.equal(await page.locator(".sidenav").isVisible(), false);
      assert.equal(await page.locator(".topbar").isVisible(), false);
      assert.equal(await page.getByRole("button", { name: "Print" }).isVisible(), false);
      assert.equal(await page.locator("#closing").isVisible(), true);
      await shot(page, "statement-print");
      await page.emulateMedia({ media: "screen" });

      const [download] = await Promise.all([
        page.waitForEvent("download"),
        page.locator("#statement-csv").click(),
      ]);
      assert.equal(download.suggestedFilename(), `statement-${month}.csv`);
      const rows = parseCsv(await Deno.readTextFile(await download.path()));
      assert.deepEqual(rows[0], ["section", "provider", "model", "requests", "amount"]);
      const figure = (section: string) => rows.find((r) => r[0] === section)?.[4];
      assert.equal(figure("purchases"), api.purchases);
      assert.equal(figure("closing_balance"), api.closing_balance);
      assert.equal(figure("opening_balance"), api.opening_balance);
      assert.deepEqual(errors, []);
    } finally {
      await ctx.close();
    }
  },
);
