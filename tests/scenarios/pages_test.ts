import assert from "node:assert/strict";
import { ADMIN_TOKEN, startRouter, type TestRouter, windowAlignedClock } from "../_helpers.ts";
import { SIGNIN_LIMIT } from "../../lib/auth/sessions.ts";
import { ensureBundle } from "./browser/_browser.ts";
import { createKey } from "../../lib/auth/keys.ts";
import { getUserByEmail, listAccountsByUser } from "../../lib/auth/users.ts";

function post(t: TestRouter, path: string, form: Record<string, string>, headers = {}) {
  return fetch(t.url + path, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", origin: t.url, ...headers },
    body: new URLSearchParams(form),
  });
}

const SIGNUP = {
  name: "Ada",
  email: "ada@example.com",
  account: "Analytical",
  password: "a long password 123",
};

Deno.test("GET / is the landing page, 200 HTML without a boot script; HEAD too", async () => {
  const t = await startRouter();
  try {
    const res = await fetch(t.url + "/");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^text\/html/);
    const html = await res.text();
    assert.match(html, /Create an account/);
    assert.ok(!html.includes('type="module"'), "no islands, no boot script");
    const head = await fetch(t.url + "/", { method: "HEAD" });
    assert.equal(head.status, 200);
    await head.body?.cancel();
    const missing = await fetch(t.url + "/dashboard/nowhere");
    assert.equal(missing.status, 404);
    assert.match(await missing.text(), /There is no such page/);
    const api404 = await fetch(t.url + "/v1/nowhere");
    assert.equal((await api404.json()).error.code, "not_found", "the API keeps JSON errors");
    const icon = await fetch(t.url + "/favicon.ico");
    assert.equal(icon.status, 200);
    await icon.body?.cancel();
  } finally {
    await t.close();
  }
});

Deno.test("sign-up sets a __Host- session cookie; the boot script comes only with islands", async () => {
  await ensureBundle();
  const t = await startRouter();
  try {
    const res = await post(t, "/signup", SIGNUP);
    assert.equal(res.status, 303);
    assert.equal(res.headers.get("location"), "/dashboard");
    const setCookie = res.headers.get("set-cookie")!;
    assert.match(setCookie, /^__Host-session=[\w-]+; Path=\/; HttpOnly; SameSite=Lax; .*Secure/);
    await res.body?.cancel();
    const cookie = setCookie.split(";")[0];

    const keys = await (await fetch(t.url + "/dashboard/keys", { headers: { cookie } })).text();
    const boot = keys.match(/<script type="module" src="(\/static\/build\/client\.js\?v=\w+)">/);
    assert.ok(boot, "the keys page boots its island");
    assert.equal(keys.split('id="__islands"').length, 2, "island props serialised once");
    assert.ok(!keys.includes("er-") || !/"key":"er-/.test(keys), "no secret in the page");
    const audit = await (await fetch(t.url + "/dashboard/audit", { headers: { cookie } })).text();
    assert.ok(!audit.includes('type="module"'), "the audit page has no island");

    const js = await fetch(t.url + boot[1]);
    assert.equal(js.status, 200);
    assert.equal(js.headers.get("cache-control"), "public, max-age=31536000, immutable");
    assert.match(js.headers.get("content-type")!, /javascript/);
    await js.body?.cancel();
    for (const bad of ["/static/../deno.json", "/static/%2e%2e/deno.json", "/static/nope.css"]) {
      const r = await fetch(t.url + bad);
      assert.equal(r.status, 404, bad);
      await r.body?.cancel();
    }
  } finally {
    await t.close();
  }
});

Deno.test("a cross-origin sign-up is refused and creates nothing", async () => {
  const t = await startRouter();
  try {
    const res = await post(t, "/signup", SIGNUP, { origin: "http://evil.example" });
    assert.equal(res.status, 403);
    await res.body?.cancel();
    const site = await post(t, "/signup", SIGNUP, { "sec-fetch-site": "cross-site" });
    assert.equal(site.status, 403);
    await site.body?.cancel();
    let users = 0;
    for await (const _ of t.kv.list({ prefix: ["user"] })) users++;
    assert.equal(users, 0);
  } finally {
    await t.close();
  }
});

Deno.test("sign-in attempts are limited per IP", async () => {
  const t = await startRouter({ now: windowAlignedClock() });
  try {
    const ok = await post(t, "/signup", SIGNUP);
    assert.equal(ok.status, 303);
    await ok.body?.cancel();
    // The sign-up counted as one attempt of this address.
    for (let i = 1; i < SIGNIN_LIMIT; i++) {
      const r = await post(t, "/signin", { email: SIGNUP.email, password: "wrong password" });
      assert.equal(r.status, 401);
      await r.body?.cancel();
    }
    const limited = await post(t, "/signin", { email: SIGNUP.email, password: SIGNUP.password });
    assert.equal(limited.status, 429, "even the right password waits for the window");
    assert.ok(Number(limited.headers.get("retry-after")) > 0);
    await limited.body?.cancel();
  } finally {
    await t.close();
  }
});

Deno.test("the audit and transaction pages page through the same rows as the API", async () => {
  const t = await startRouter();
  try {
    const res = await post(t, "/signup", SIGNUP);
    const cookie = res.headers.get("set-cookie")!.split(";")[0];
    await res.body?.cancel();
    const user = (await getUserByEmail(t.kv, SIGNUP.email))!;
    const acct = (await listAccountsByUser(t.kv, user.id))[0].account_id;
    await t.router.svc.actors.submit(acct, {
      kind: "credit",
      type: "adjustment",
      amount: 1_000_000_000n,
      description: "test credit",
      reference: null,
    });
    const { secret } = await createKey(
      t.kv,
      acct,
      { name: "pager", scope: "inference" },
      Date.now(),
    );
    for (let i = 0; i < 53; i++) {
      const r = await t.call(secret, "POST", "/v1/chat/completions", {
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
      });
      assert.equal(r.status, 200);
      await r.body?.cancel();
    }
    await t.router.flush();
    const get = async (path: string) =>
      await (await fetch(t.url + path, { headers: { cookie } })).text();
    const ids = (html: string, attr: string) =>
      [...html.matchAll(new RegExp(`${attr}="([^"]+)"`, "g"))].map((m) => m[1]);
    const older = (html: string) =>
      html.match(/href="(\?[^"]*cursor=[^"]+)"/)?.[1].replaceAll("&amp;", "&");

    const api1 = JSON.parse(await get("/v1/audit?limit=50"));
    const page1 = await get("/dashboard/audit");
    assert.deepEqual(ids(page1, "data-request-id"), api1.data.map((r: Row) => r.request_id));
    const next = older(page1);
    assert.ok(next, "a link to older rows");
    const page2 = await get("/dashboard/audit" + next);
    const api2 = JSON.parse(await get(`/v1/audit?limit=50&cursor=${api1.next_cursor}`));
    assert.deepEqual(ids(page2, "data-request-id"), api2.data.map((r: Row) => r.request_id));
    assert.equal(ids(page2, "data-request-id").length, 3);
    assert.equal(older(page2), undefined);

    const tx1 = await get("/dashboard/settings/billing");
    const apiTx = JSON.parse(await get("/v1/transactions?limit=50"));
    assert.deepEqual(ids(tx1, "data-id"), apiTx.data.map((r: { id: string }) => r.id));
    const tx2 = await get("/dashboard/settings/billing" + older(tx1));
    assert.equal(ids(tx2, "data-id").length, 4, "53 debits and the credit: 54 entries");
    // A cursor the list refuses (an edited or outdated link) shows the first page.
    assert.deepEqual(
      ids(await get("/dashboard/audit?cursor=not-a-cursor"), "data-request-id"),
      ids(page1, "data-request-id"),
    );
    assert.deepEqual(
      ids(await get("/dashboard/settings/billing?cursor=not-a-cursor"), "data-id"),
      ids(tx1, "data-id"),
    );
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

type Row = { request_id: string };

Deno.test("an operator's adjustment form submitted twice records the credit once", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("1");
    const signin = await post(t, "/dashboard/admin/signin", { token: ADMIN_TOKEN });
    assert.equal(signin.status, 303);
    const cookie = signin.headers.get("set-cookie")!.split(";")[0];
    await signin.body?.cancel();
    const page = await (await fetch(`${t.url}/dashboard/admin/accounts/${acct.id}`, {
      headers: { cookie },
    })).text();
    const field = (name: string) => page.match(new RegExp(`name="${name}" value="([^"]+)"`))![1];
    const form = {
      _csrf: field("_csrf"),
      nonce: field("nonce"),
      type: "adjustment",
      amount: "0.5",
      reason: "goodwill",
    };
    for (let i = 0; i < 2; i++) {
      const r = await post(t, `/dashboard/admin/accounts/${acct.id}`, form, { cookie });
      assert.equal(r.status, 303);
      await r.body?.cancel();
    }
    const credits = await (await t.call(acct.mgmt, "GET", "/v1/credits")).json();
    assert.equal(credits.balance, "1.5");
    // Without the CSRF token nothing is recorded.
    const forged = await post(t, `/dashboard/admin/accounts/${acct.id}`, {
      ...form,
      _csrf: "",
      nonce: "form_0123456789abcdef",
    }, { cookie });
    assert.equal(forged.status, 403);
    await forged.body?.cancel();
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
