import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { json, type TestRouter } from "../../_helpers.ts";
import { browserTest, hydrated, shot, signUp, usd, watchErrors } from "./_browser.ts";

/** The API as the page's signed-in session: its cookie, this origin and its CSRF token. */
async function asSession(t: TestRouter, page: Page, method: string, path: string, body?: unknown) {
  const c = (await page.context().cookies()).find((c) => c.name === "__Host-session");
  assert.ok(c, "signed in");
  const csrf = await page.locator("input[name=_csrf]").first().getAttribute("value");
  return await fetch(t.url + path, {
    method,
    headers: {
      cookie: `${c.name}=${c.value}`,
      origin: t.url,
      "x-csrf-token": csrf ?? "",
      "content-type": "application/json",
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

browserTest(
  "Settings › Billing: save a card, configure auto top-up and the low-balance alert; a declined top-up and the low balance show as a banner on every page",
  async (t, browser) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    const errors = watchErrors(page);
    try {
      await signUp(page, t, { email: "topup@example.com" });
      await page.goto(`${t.url}/dashboard/settings/billing`);
      await hydrated(page);
      assert.equal(await page.locator("#alert-banner").count(), 0, "no alert yet");
      await page.getByRole("button", { name: "Buy Starter" }).click();
      await page.waitForURL(/purchased=starter/);
      await hydrated(page);
      assert.equal(await usd(page, "#balance .money"), "10");

      // A test card that is declined (development billing), then auto top-up at the balance.
      assert.match(await page.locator("#card-summary").innerText(), /No card saved/);
      await page.getByLabel("Test card").selectOption("pm_card_chargeDeclined");
      await page.getByRole("button", { name: "Save a card" }).click();
      await page.getByText("Card saved.").waitFor();
      assert.match(await page.locator("#card-summary").innerText(), /VISA •••• 0002/);
      await page.getByLabel("Top up automatically").check();
      await page.getByLabel("Top up when the balance falls below (USD)").fill("10");
      await page.getByLabel("Add (USD)").fill("15");
      await page.getByLabel("At most this a month (USD)").fill("60");
      await page.getByRole("button", { name: "Save auto top-up" }).click();
      await page.getByText("Auto top-up is on.").waitFor();
      await page.getByLabel("Alert when the balance falls below (USD)", { exact: true }).fill("10");
      await page.getByRole("button", { name: "Save alert" }).click();
      await page.getByText("Low-balance alert saved.").waitFor();
      const api = await json(await asSession(t, page, "GET", "/v1/billing/auto_topup"), 200);
      assert.deepEqual(
        [api.enabled, api.threshold, api.amount, api.monthly_cap],
        [true, "10", "15", "60"],
      );
      await shot(page, "billing-topup-desktop");

      // One request takes the balance below $10: the top-up is tried and declined.
      const { key } = await json(
        await asSession(t, page, "POST", "/v1/keys", { name: "backend" }),
        201,
      );
      await json(
        await t.call(key, "POST", "/v1/chat/completions", {
          model: "openai/gpt-4o-mini",
          messages: [{ role: "user", content: "hi" }],
        }),
        200,
      );
      await t.router.svc.spend.idle();

      await page.reload();
      await hydrated(page);
      const banner = page.locator("#alert-banner");
      assert.match(
        await banner.locator("[data-alert='auto_topup.failed']").innerText(),
        /Auto top-up of \$15\.00 failed: the card was declined\./,
      );
      assert.match(
        await banner.locator("[data-alert='balance.low']").innerText(),
        /below your alert threshold of \$10\.00/,
      );
      assert.match(await page.locator("#topup-month").innerText(), /1 failed in a row/);
      await shot(page, "billing-alert-banner-desktop");
      // On every dashboard page while active.
      for (const path of ["/dashboard", "/dashboard/keys", "/dashboard/settings/webhooks"]) {
        await page.goto(t.url + path);
        assert.equal(await page.locator("#alert-banner [data-alert]").count(), 2, path);
      }
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${t.url}/dashboard`);
      await shot(page, "alert-banner-phone");
      await page.setViewportSize({ width: 1280, height: 900 });

      // A key's alert thresholds on the keys page.
      await page.goto(`${t.url}/dashboard/keys`);
      await hydrated(page);
      await page.getByLabel("Name").fill("capped");
      await page.getByLabel("Credit limit (USD)").first().fill("5");
      await page.getByLabel("Alert at (% of limit)").first().fill("50, 90");
      await page.getByRole("button", { name: "Create key" }).click();
      await page.locator("#new-key-secret").waitFor();
      const row = page.locator("#keys-table tr[data-key-id]", { hasText: "capped" });
      assert.match(await row.locator(".key-alerts").innerText(), /alerts at 50, 90 %/);
      const keys = await json(await asSession(t, page, "GET", "/v1/keys"), 200);
      const capped = keys.data.find((k: { name: string }) => k.name === "capped");
      assert.deepEqual(capped.alert_thresholds, [0.5, 0.9]);

      // Credit lifts the balance: the low-balance alert goes; the failed top-up stays until one
      // succeeds.
      await page.goto(`${t.url}/dashboard/settings/billing`);
      await hydrated(page);
      await page.getByRole("button", { name: "Buy Starter" }).click();
      await page.waitForURL(/purchased=starter/);
      assert.deepEqual(
        await page.locator("#alert-banner [data-alert]").evaluateAll((els) =>
          els.map((e) => e.getAttribute("data-alert"))
        ),
        ["auto_topup.failed"],
      );
      assert.deepEqual(errors, []);
      await t.assertBooks();
    } finally {
      await ctx.close();
    }
  },
);
