/** Defects found walking the dashboard as a user: each test fails without its fix. */
import assert from "node:assert/strict";
import OpenAI from "openai";
import type { Page } from "playwright-core";
import { browserTest, hydrated, signUp, usd, watchErrors } from "./_browser.ts";

const DAY = 86_400_000;
const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);

async function apply(page: Page) {
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForLoadState();
}

browserTest(
  "dashboard period form: each preset applies, edited dates mean those dates",
  async (t, browser) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchErrors(page);
    await signUp(page, t, { email: "periods@example.com" });
    const now = Date.now();
    const today = day(now);
    const period = page.locator("select[name='period']");
    const from = page.getByLabel("From", { exact: true });
    const to = page.getByLabel("To", { exact: true });
    for (const path of ["/dashboard", "/dashboard/usage"]) {
      await page.goto(t.url + path);
      for (
        const [label, days] of [["Last 7 days", 7], ["Last 90 days", 90], ["Last 30 days", 30]]
      ) {
        await period.selectOption({ label: label as string });
        await apply(page);
        assert.equal(await period.locator("option:checked").innerText(), label, `${path} ${label}`);
        assert.equal(await from.inputValue(), day(now - ((days as number) - 1) * DAY));
        assert.equal(await to.inputValue(), today);
      }
      // Dates typed in mean those dates; then a preset chosen again means the preset.
      await from.fill(day(now - 3 * DAY));
      await apply(page);
      assert.equal(await period.locator("option:checked").innerText(), "Custom dates");
      assert.equal(await from.inputValue(), day(now - 3 * DAY));
      await period.selectOption({ label: "Last 7 days" });
      await apply(page);
      assert.equal(await period.locator("option:checked").innerText(), "Last 7 days", path);
      assert.equal(await from.inputValue(), day(now - 6 * DAY));
    }
    assert.deepEqual(errors, []);
  },
);

browserTest(
  "dashboard custom dates the API refuses keep the page and say what is wrong",
  async (t, browser) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await signUp(page, t, { email: "dates@example.com" });
    const today = day(Date.now());
    for (const path of ["/dashboard", "/dashboard/usage"]) {
      for (const [from, to] of [["2026-02-30", "2026-03-05"], ["2000-01-01", today]]) {
        const res = await page.goto(`${t.url}${path}?period=custom&from=${from}&to=${to}`);
        assert.equal(res?.status(), 200, `${path} ${from}..${to}`);
        // Still the dashboard: its navigation, the form, and a notice about the dates.
        assert.equal(await page.locator("nav.sidenav").count(), 1);
        assert.match(await page.locator(".notice.error").innerText(), /date/i);
        assert.equal(
          await page.locator("select[name='period'] option:checked").innerText(),
          "Last 30 days",
        );
      }
    }
  },
);

browserTest(
  "dashboard audit: dates the export refuses are refused on the page too, never a 500",
  async (t, browser) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await signUp(page, t, { email: "audit@example.com" });
    for (const q of ["from=2026-11-20&to=2026-11-01", "from=2026-02-30", "to=2026-02-31"]) {
      const res = await page.goto(`${t.url}/dashboard/audit?${q}`);
      assert.equal(res?.status(), 400, q);
      assert.equal(await page.locator("nav.sidenav").count(), 1, q);
      assert.match(await page.locator(".notice.error").innerText(), /date|before|after/, q);
      // The export link carries no date the export would refuse.
      const href = (await page.locator("#export-csv").getAttribute("href"))!;
      const exp = await page.request.get(t.url + href);
      assert.equal(exp.status(), 200, `${q}: ${href}`);
    }
  },
);

browserTest(
  "dashboard usage: the spend chart of a long custom period reaches its last day",
  async (t, browser) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchErrors(page);
    await signUp(page, t, { email: "long@example.com" });
    await page.goto(t.url + "/dashboard/keys");
    await hydrated(page);
    await page.getByLabel("Name").fill("backend");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.locator("#new-key-secret", { hasText: "er-" }).waitFor();
    const secret = (await page.locator("#new-key-secret").innerText()).trim();
    await page.goto(t.url + "/dashboard/settings/billing");
    await hydrated(page);
    await page.getByRole("button", { name: "Buy Starter" }).click();
    await page.waitForURL(/purchased=starter/);
    t.openai.scenario = { usage: { prompt_tokens: 1000, completion_tokens: 500 } };
    const client = new OpenAI({ apiKey: secret, baseURL: `${t.url}/v1` });
    await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "hello" }],
    });
    await t.router.flush();

    const now = Date.now();
    const from = day(now - 1000 * DAY);
    await page.goto(`${t.url}/dashboard/usage?period=custom&from=${from}&to=${day(now)}`);
    await page.waitForSelector(".charts[data-drawn='true']");
    const islands = JSON.parse((await page.locator("#__islands").textContent())!);
    const days: { day: string; cost: string }[] = islands[0].props.days;
    assert.equal(days.length, 1001);
    assert.equal(days[0].day, from);
    assert.equal(days.at(-1)!.day, day(now));
    assert.equal(days.at(-1)!.cost, await usd(page, "#usage-cost .metric-value .money"));
    assert.equal(await page.getByText("No spend in this period yet.").count(), 0);
    assert.deepEqual(errors, []);
  },
);

browserTest(
  "dashboard members: each Remove button names the member it removes",
  async (t, browser) => {
    for (const email of ["bob@example.com", "cy@example.com"]) {
      const other = await browser.newPage();
      await signUp(other, t, { email });
      await other.close();
    }
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchErrors(page);
    await signUp(page, t, { email: "owner@example.com" });
    await page.goto(t.url + "/dashboard/settings/members");
    for (const email of ["bob@example.com", "cy@example.com"]) {
      await page.getByLabel("Email of a signed-up user").fill(email);
      await page.getByRole("button", { name: "Add member" }).click();
      await page.getByText(`${email} is now a member.`).waitFor();
    }
    await page.getByRole("button", { name: "Remove bob@example.com" }).click();
    await page.getByText("Member removed.").waitFor();
    assert.equal(
      await page.locator("#members tbody tr", { hasText: "bob@example.com" }).count(),
      0,
    );
    assert.equal(await page.getByRole("button", { name: "Remove cy@example.com" }).count(), 1);
    assert.deepEqual(errors, []);
  },
);

browserTest(
  "dashboard keys: a row action's error shows at its row, the create form's in its card",
  async (t, browser) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.setDefaultTimeout(5000);
    await signUp(page, t, { email: "rows@example.com" });
    await page.goto(t.url + "/dashboard/keys");
    await hydrated(page);
    for (const name of ["alpha", "beta", "gamma"]) {
      await page.getByLabel("Name").fill(name);
      await page.getByRole("button", { name: "Create key" }).click();
      await page.locator("#keys-table tbody tr", { hasText: name }).waitFor();
    }
    const idOf = async (name: string) =>
      (await page.locator("#keys-table tbody tr", { hasText: name }).getAttribute("data-key-id"))!;
    const [alpha, beta, gamma] = [await idOf("alpha"), await idOf("beta"), await idOf("gamma")];
    const createCard = page.locator("section.card", {
      has: page.getByRole("heading", { name: "Create a key" }),
    });

    // alpha and beta are revoked in another tab: this one's actions on them now fail.
    const other = await context.newPage();
    await other.goto(t.url + "/dashboard/keys");
    await hydrated(other);
    for (const name of ["alpha", "beta"]) {
      await other.getByRole("button", { name: `Revoke ${name}` }).click();
      await other.getByRole("button", { name: `Confirm revoke of ${name}` }).click();
      await other.locator("#keys-table tbody tr", { hasText: name }).waitFor({ state: "detached" });
    }
    await other.close();

    // Disable: the error is announced in the row right under beta's.
    await page.getByRole("button", { name: "Disable beta" }).click();
    const betaError = page.locator(`tr[data-key-id='${beta}'] + tr`).getByRole("alert");
    await betaError.waitFor();
    assert.match(await betaError.innerText(), /not found/i);
    assert.equal(await createCard.getByRole("alert").count(), 0);

    // Edit limit: under alpha's edit form, and beta's error is gone.
    await page.getByRole("button", { name: "Edit limit of alpha" }).click();
    await page.locator(".edit-row input[name='credit_limit']").fill("5");
    await page.getByRole("button", { name: "Save limit" }).click();
    const alphaError = page.locator(`tr[data-key-id='${alpha}'] + tr.edit-row + tr`)
      .getByRole("alert");
    await alphaError.waitFor();
    assert.match(await alphaError.innerText(), /not found/i);
    assert.equal(await page.getByRole("alert").count(), 1);

    // Revoke: a refusal of the DELETE shows under gamma's row.
    await page.route(
      `**/v1/keys/${gamma}`,
      (route) =>
        route.request().method() === "DELETE"
          ? route.fulfill({
            status: 409,
            contentType: "application/json",
            body: JSON.stringify({
              error: { type: "conflict", message: "The key changed while it was being revoked" },
            }),
          })
          : route.fallback(),
    );
    await page.getByRole("button", { name: "Revoke gamma" }).click();
    await page.getByRole("button", { name: "Confirm revoke of gamma" }).click();
    const gammaError = page.locator(`tr[data-key-id='${gamma}'] + tr`).getByRole("alert");
    await gammaError.waitFor();
    assert.match(await gammaError.innerText(), /changed while/);
    assert.equal(await createCard.getByRole("alert").count(), 0);

    // The create form's own error stays in its card.
    await page.getByLabel("Name").fill("   ");
    await page.getByRole("button", { name: "Create key" }).click();
    await createCard.getByRole("alert").waitFor();
    assert.match(await createCard.getByRole("alert").innerText(), /name/i);
    assert.equal(await page.locator("#keys-table").getByRole("alert").count(), 1);
    assert.deepEqual(pageErrors, []);
  },
);

browserTest(
  "sign-in's Create an account link keeps the deep link: the new user lands on it",
  async (t, browser) => {
    const taken = await browser.newPage();
    await signUp(taken, t, { email: "taken@example.com" });
    await taken.close();

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.setDefaultTimeout(5000);
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const deep = "/dashboard/usage?group_by=model&period=7d";
    await page.goto(t.url + deep);
    await page.waitForURL(/\/signin\?next=/);
    await page.getByRole("link", { name: "Create an account" }).click();
    await page.waitForURL(/\/signup\?next=/);
    const fill = async (email: string) => {
      await page.getByLabel("Your name").fill("Ada");
      await page.getByLabel("Email").fill(email);
      await page.getByLabel("Organisation").fill("Analytical Engines");
      await page.getByLabel("Password").fill("a long password 123");
      await page.getByRole("button", { name: "Create account" }).click();
      await page.waitForLoadState();
    };
    // A refused sign-up keeps the return address for the next try.
    await fill("taken@example.com");
    assert.match(await page.locator(".notice.error").innerText(), /already exists/);
    await fill("deep@example.com");
    await page.waitForURL(t.url + deep);
    assert.equal(
      await page.locator("select[name='period'] option:checked").innerText(),
      "Last 7 days",
    );

    // Another site's address is not followed, through sign-up as through sign-in.
    for (const next of ["https://evil.example/", "//evil.example/"]) {
      const other = await browser.newPage();
      await other.goto(`${t.url}/signin?next=${encodeURIComponent(next)}`);
      await other.getByRole("link", { name: "Create an account" }).click();
      await other.waitForURL(`${t.url}/signup`);
      await other.goto(`${t.url}/signup?next=${encodeURIComponent(next)}`);
      await signUp(other, t, { email: `evil${next.length}@example.com` });
      await other.close();
    }
    assert.deepEqual(pageErrors, []);
  },
);

browserTest(
  "dashboard keys: the credit limit field says what it takes, and so does its error",
  async (t, browser) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.setDefaultTimeout(5000);
    const errors = watchErrors(page);
    await signUp(page, t, { email: "limits@example.com" });
    await page.goto(t.url + "/dashboard/keys");
    await hydrated(page);
    await page.getByRole("button", { name: "Edit limit of Management" }).click();
    for (const form of [page.locator(".keys form").first(), page.locator(".edit-row form")]) {
      const input = form.getByLabel("Credit limit (USD)");
      // A visible hint, tied to the input, of the form the API takes.
      const described = await input.getAttribute("aria-describedby");
      assert.ok(described, "the limit input is described by its hint");
      const hint = page.locator(`[id='${described}']`);
      assert.equal(await hint.count(), 1);
      assert.ok(await hint.isVisible(), "the hint is shown");
      assert.match(
        await hint.innerText(),
        /USD amount.*25.*12\.50.*9 decimals.*empty for no limit/i,
      );
      // A bad value is refused with the format in the title: Chromium shows it under its own
      // "Please match the requested format." (validationMessage holds only the latter).
      assert.match((await input.getAttribute("title"))!, /USD amount.*25.*12\.50.*9 decimals/);
      await input.fill("12,50");
      await form.getByRole("button").click();
      assert.equal(
        await input.evaluate((el) => (el as HTMLInputElement).validity.patternMismatch),
        true,
      );
      await input.fill("");
    }
    assert.deepEqual(errors, []);
  },
);
