/** Hostile strings a user or an API client controls, shown on every dashboard page: never run. */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { browserTest, hydrated, signUp, watchErrors } from "./_browser.ts";

const SCRIPT = "</script><script>window.__xss=1;alert(1)</script>";
const IMG = `"><img src=x onerror="window.__xss=2;alert(2)">`;

/** Calls the management API as the page's session. */
function api(page: Page, method: string, path: string, body?: unknown) {
  return page.evaluate(async ([method, path, body]) => {
    const csrf = document.querySelector<HTMLInputElement>("input[name=_csrf]")!.value;
    const res = await fetch(path as string, {
      method: method as string,
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return await res.json();
  }, [method, path, body] as const);
}

browserTest(
  "key, account, user, model and user-agent strings are shown as text on every page",
  async (t, browser) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchErrors(page);
    const dialogs: string[] = [];
    page.on("dialog", (d) => {
      dialogs.push(d.message());
      d.dismiss().catch(() => {});
    });
    await signUp(page, t, { email: "xss@example.com", name: IMG, org: SCRIPT });
    await api(page, "POST", "/v1/billing/checkout", { package_id: "starter" });
    const key = await api(page, "POST", "/v1/keys", { name: SCRIPT });
    await api(page, "POST", "/v1/keys", { name: IMG, scope: "management" });
    for (const model of [`openai/gpt-4o-mini`, `evil/${IMG}`, `x/${SCRIPT}`]) {
      const res = await fetch(`${t.url}/v1/chat/completions`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${key.key}`,
          "content-type": "application/json",
          "user-agent": `${SCRIPT}${IMG}`,
        },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
      });
      await res.body?.cancel();
    }
    await t.router.flush();
    const paths = [
      "/dashboard",
      "/dashboard?group_by=model",
      "/dashboard?group_by=provider",
      "/dashboard/usage",
      "/dashboard/usage?group_by=model",
      "/dashboard/keys",
      "/dashboard/audit",
      `/dashboard/audit?model=${encodeURIComponent(IMG)}&provider=${encodeURIComponent(SCRIPT)}`,
      "/dashboard/settings/billing",
      "/dashboard/settings/members",
      `/dashboard/settings/billing?purchased=${encodeURIComponent(SCRIPT)}&checkout=${
        encodeURIComponent(IMG)
      }`,
      `/signin?next=${encodeURIComponent("/" + SCRIPT)}`,
    ];
    for (const path of paths) {
      await page.goto(t.url + path);
      await hydrated(page);
      assert.equal(
        await page.evaluate(() => (window as { __xss?: number }).__xss),
        undefined,
        path,
      );
      assert.equal(await page.locator("img[src=x]").count(), 0, path);
    }
    // The strings are there, as text.
    await page.goto(t.url + "/dashboard/keys");
    await hydrated(page);
    assert.ok((await page.locator("main").innerText()).includes(SCRIPT));
    await page.goto(t.url + "/dashboard/audit");
    const audit = await page.locator("#audit-table").innerText();
    assert.ok(audit.includes(IMG) && audit.includes(SCRIPT));
    assert.ok((await page.locator(".account-name").innerText()).includes(SCRIPT));
    await page.goto(t.url + "/dashboard/settings/members");
    assert.ok((await page.locator("#members").innerText()).includes(IMG));
    assert.deepEqual(dialogs, []);
    assert.deepEqual(errors.filter((e) => !/status of 40\d/.test(e)), []);
  },
);
