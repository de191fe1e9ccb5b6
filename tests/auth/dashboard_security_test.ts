import assert from "node:assert/strict";
import { signUp } from "../../lib/auth/users.ts";
import { safeNext } from "../../lib/render/session.ts";
import { createSession, PLAIN_SESSION_COOKIE, SESSION_COOKIE } from "../../lib/auth/sessions.ts";
import { json, startRouter } from "../_helpers.ts";

Deno.test("safeNext keeps same-site paths and refuses anything a browser resolves off-site", () => {
  assert.equal(safeNext("/dashboard/keys?x=1#y"), "/dashboard/keys?x=1#y");
  assert.equal(safeNext("/dashboard/audit?model=a%2F%2Fb"), "/dashboard/audit?model=a%2F%2Fb");
  for (
    const bad of [
      "//evil.example",
      "/\\evil.example",
      "https://evil.example",
      // The URL parser drops tabs and newlines anywhere: these are "//evil.example" to a browser.
      "/\t/evil.example",
      "/\n/evil.example",
      "/\r/evil.example",
      "/\t\\evil.example",
      "",
      null,
      undefined,
    ]
  ) {
    assert.equal(safeNext(bad), "/dashboard", JSON.stringify(bad));
  }
});

Deno.test("sign-in never redirects off-site, whatever `next` the link carried", async () => {
  const t = await startRouter();
  try {
    await signUp(t.kv, {
      email: "nx@example.com",
      name: "N",
      password: "password-n-123",
      accountName: "N Co",
    });
    for (const next of ["/\t/evil.example", "/\t\\evil.example", "//evil.example"]) {
      // The page puts the link's `next` in its form; the form posts it back.
      const page = await fetch(`${t.url}/signin?next=${encodeURIComponent(next)}`);
      const html = await page.text();
      const posted = /name="next" value="([^"]*)"/.exec(html)?.[1] ?? "";
      const res = await fetch(`${t.url}/signin`, {
        method: "POST",
        redirect: "manual",
        headers: { origin: t.url },
        body: new URLSearchParams({
          email: "nx@example.com",
          password: "password-n-123",
          next: posted.replaceAll("&#9;", "\t"),
        }),
      });
      await res.body?.cancel();
      assert.equal(res.status, 303);
      const location = res.headers.get("location") ?? "";
      assert.equal(new URL(location, t.url).origin, t.url, `next=${JSON.stringify(next)}`);
    }
  } finally {
    await t.close();
  }
});

Deno.test("on a secure site only the __Host- cookie carries a session: a planted plain one is ignored", async () => {
  // A sibling subdomain or a network attacker on plain http can set `session=…` for the host (it
  // need not be Secure and may name a Domain); only `__Host-session` is this origin's own.
  const t = await startRouter();
  try {
    const a = await signUp(t.kv, {
      email: "plain@example.com",
      name: "P",
      password: "password-p-123",
      accountName: "Attacker Co",
    });
    assert.ok(a);
    const { token } = await createSession(t.kv, {
      kind: "user",
      user_id: a.user.id,
      account_id: a.account.id,
    }, Date.now());
    const get = (path: string, cookie: string) =>
      fetch(t.url + path, { redirect: "manual", headers: { cookie } });

    const own = await get("/dashboard", `${SESSION_COOKIE}=${token}`);
    await own.body?.cancel();
    assert.equal(own.status, 200, "the __Host- cookie works");

    const planted = await get("/dashboard", `${PLAIN_SESSION_COOKIE}=${token}`);
    await planted.body?.cancel();
    assert.equal(
      planted.status,
      303,
      "the loopback site is secure: the plain cookie is no session",
    );
    assert.match(planted.headers.get("location") ?? "", /^\/signin/);

    const api = await get("/v1/credits", `${PLAIN_SESSION_COOKIE}=${token}`);
    assert.equal((await json(api, 401)).error.code, "invalid_api_key");
  } finally {
    await t.close();
  }
});

Deno.test("on a plain-http site (not loopback) the unprefixed cookie is the session", async () => {
  const t = await startRouter({ env: { PUBLIC_URL: "http://10.0.0.5:8000" } });
  try {
    const a = await signUp(t.kv, {
      email: "http@example.com",
      name: "H",
      password: "password-h-123",
      accountName: "H Co",
    });
    assert.ok(a);
    const { token } = await createSession(t.kv, {
      kind: "user",
      user_id: a.user.id,
      account_id: a.account.id,
    }, Date.now());
    const res = await fetch(t.url + "/v1/credits", {
      headers: { cookie: `${PLAIN_SESSION_COOKIE}=${token}` },
    });
    assert.equal((await json(res, 200)).balance, "0");
  } finally {
    await t.close();
  }
});
