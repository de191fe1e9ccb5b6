import assert from "node:assert/strict";
import { signUp } from "../../lib/onboarding.ts";
import { safeNext } from "../../lib/render/session.ts";
import {
  createSession,
  PLAIN_SESSION_COOKIE,
  SESSION_COOKIE,
  SIGNIN_EMAIL_LIMIT,
} from "../../lib/auth/sessions.ts";
import { json, startRouter, userSession, windowAlignedClock } from "../_helpers.ts";

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
    }, Date.now());
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
    const { token } = await userSession(t, "plain@example.com");
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
    const { token } = await userSession(t, "http@example.com");
    const res = await fetch(t.url + "/v1/credits", {
      headers: { cookie: `${PLAIN_SESSION_COOKIE}=${token}` },
    });
    assert.equal((await json(res, 200)).balance, "0");
  } finally {
    await t.close();
  }
});

/** A signed-up user with a dashboard session on their own account. */

Deno.test("a dashboard session never reaches another account's keys, audit rows or ledger", async () => {
  const t = await startRouter();
  try {
    const theirs = await t.account("5");
    const chat = await t.call(theirs.key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "secret prompt" }],
    });
    const requestId = chat.headers.get("x-request-id")!;
    await json(chat, 200);
    await t.router.flush();
    const me = await userSession(t, "iso@example.com");
    const api = (method: string, path: string, body?: unknown) =>
      fetch(t.url + path, {
        method,
        redirect: "manual",
        headers: me.headers({ "content-type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
      });

    for (const method of ["GET", "PATCH", "DELETE"]) {
      const res = await api(
        method,
        `/v1/keys/${theirs.keyId}`,
        method === "PATCH" ? { disabled: true } : undefined,
      );
      assert.equal((await json(res, 404)).error.code, "not_found", method);
    }
    await json(await api("GET", `/v1/keys/${theirs.keyId}/usage`), 404);
    await json(await api("GET", `/v1/audit/${requestId}`), 404);
    assert.deepEqual(
      (await json(await api("GET", `/v1/audit?key_id=${theirs.keyId}`), 200)).data,
      [],
    );
    const exported = await api("GET", `/v1/audit/export?format=json&key_id=${theirs.keyId}`);
    assert.deepEqual(JSON.parse(await exported.text()), []);
    assert.deepEqual((await json(await api("GET", "/v1/transactions"), 200)).data, []);
    assert.equal((await json(await api("GET", "/v1/credits"), 200)).balance, "0");
    const usage = await json(await api("GET", `/v1/usage?key_id=${theirs.keyId}`), 200);
    assert.equal(usage.summary.requests, 0);

    // The dashboard pages, given their ids, show nothing of theirs.
    for (
      const path of [
        `/dashboard/audit?key_id=${theirs.keyId}`,
        `/dashboard?key_id=${theirs.keyId}`,
        `/dashboard/usage?key_id=${theirs.keyId}`,
        "/dashboard/keys",
        "/dashboard/settings/billing",
      ]
    ) {
      const html = await (await api("GET", path)).text();
      assert.ok(!html.includes(requestId), path);
      // Their key id is echoed only as the filter asked for (the export link), never as a key.
      assert.ok(!html.includes(`value="${theirs.keyId}"`), path);
      assert.ok(!html.includes("test key"), path);
    }
    // Switching into their account is refused; the session stays in its own.
    const sw = await fetch(t.url + "/dashboard/switch", {
      method: "POST",
      redirect: "manual",
      headers: me.headers(),
      body: new URLSearchParams({ _csrf: me.csrf, account_id: theirs.id }),
    });
    await sw.body?.cancel();
    assert.equal((await json(await api("GET", "/v1/credits"), 200)).balance, "0");
    // Their key is untouched.
    const k = await json(await t.call(theirs.mgmt, "GET", `/v1/keys/${theirs.keyId}`), 200);
    assert.equal(k.disabled, false);
    assert.equal(k.revoked, false);
  } finally {
    await t.close();
  }
});

Deno.test("a removed member's session stops working at once, on the pages and the API", async () => {
  const t = await startRouter();
  try {
    const owner = await userSession(t, "owner@example.com");
    const member = await userSession(t, "member@example.com");
    const add = await fetch(t.url + "/dashboard/settings/members", {
      method: "POST",
      headers: owner.headers(),
      body: new URLSearchParams({ _csrf: owner.csrf, email: "member@example.com" }),
    });
    assert.equal(add.status, 200, await add.text());
    const sw = await fetch(t.url + "/dashboard/switch", {
      method: "POST",
      redirect: "manual",
      headers: member.headers(),
      body: new URLSearchParams({ _csrf: member.csrf, account_id: owner.account.id }),
    });
    await sw.body?.cancel();
    const keys = () => fetch(t.url + "/v1/keys", { headers: member.headers(), redirect: "manual" });
    const before = await json(await keys(), 200);
    assert.equal(before.data.length, 1, "the owner's account's management key");

    const rm = await fetch(t.url + "/dashboard/settings/members", {
      method: "POST",
      headers: owner.headers(),
      body: new URLSearchParams({ _csrf: owner.csrf, remove: member.user.id }),
    });
    assert.equal(rm.status, 200, await rm.text());
    await json(await keys(), 401);
    const page = await fetch(t.url + "/dashboard/keys", {
      headers: member.headers(),
      redirect: "manual",
    });
    await page.body?.cancel();
    assert.equal(page.status, 303);
    const post = await fetch(t.url + "/v1/keys", {
      method: "POST",
      headers: member.headers({ "content-type": "application/json" }),
      body: JSON.stringify({ name: "after removal" }),
    });
    await json(post, 401);
  } finally {
    await t.close();
  }
});

Deno.test("every state-changing form and session API call refuses a missing token or a foreign origin", async () => {
  const t = await startRouter();
  try {
    const me = await userSession(t, "csrf@example.com");
    const other = await userSession(t, "csrf-other@example.com");
    const cookie = me.headers().cookie;
    const forms: [string, Record<string, string>][] = [
      ["/signout", {}],
      ["/dashboard/switch", { account_id: me.account.id }],
      ["/dashboard/settings/members", { email: "csrf-other@example.com" }],
    ];
    const attempts: [string, Record<string, string>][] = [
      ["no token", { origin: t.url }],
      ["wrong token", { origin: t.url, _csrf: "x".repeat(me.csrf.length) }],
      ["cross-site", { origin: "http://evil.example", _csrf: me.csrf }],
      ["sec-fetch-site cross-site", { "sec-fetch-site": "cross-site", _csrf: me.csrf }],
    ];
    for (const [path, fields] of forms) {
      for (const [what, a] of attempts) {
        const { _csrf, ...headers } = a;
        const body = new URLSearchParams(fields);
        if (_csrf) body.set("_csrf", _csrf);
        const res = await fetch(t.url + path, {
          method: "POST",
          redirect: "manual",
          headers: { cookie, ...headers },
          body,
        });
        await res.body?.cancel();
        assert.equal(res.status, 403, `${path}: ${what}`);
      }
    }
    const writes: [string, string, unknown][] = [
      ["POST", "/v1/keys", { name: "k" }],
      ["POST", "/v1/billing/checkout", { package_id: "starter" }],
    ];
    const mine = await json(
      await fetch(t.url + "/v1/keys", { headers: me.headers() }),
      200,
    );
    const keyId = mine.data[0].id;
    writes.push(["PATCH", `/v1/keys/${keyId}`, { disabled: true }], [
      "DELETE",
      `/v1/keys/${keyId}`,
      undefined,
    ]);
    for (const [method, path, body] of writes) {
      for (const [what, a] of attempts) {
        const { _csrf, ...headers } = a;
        const res = await fetch(t.url + path, {
          method,
          headers: {
            cookie,
            "content-type": "application/json",
            ...headers,
            ...(_csrf ? { "x-csrf-token": _csrf } : {}),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        assert.equal((await json(res, 403)).error.code, "forbidden", `${method} ${path}: ${what}`);
      }
    }
    // Another session's token is not this one's.
    const res = await fetch(t.url + "/v1/keys", {
      method: "POST",
      headers: { cookie, origin: t.url, "x-csrf-token": other.csrf },
      body: JSON.stringify({ name: "k" }),
    });
    await json(res, 403);
    // Nothing changed: one key, live; no credit; the session still works; no member added.
    const after = await json(await fetch(t.url + "/v1/keys", { headers: me.headers() }), 200);
    assert.equal(after.data.length, 1);
    assert.equal(after.data[0].disabled, false);
    assert.equal(
      (await json(await fetch(t.url + "/v1/credits", { headers: me.headers() }), 200)).balance,
      "0",
    );
  } finally {
    await t.close();
  }
});

Deno.test("sign-in starts a new session id, and sign-out ends it on the server", async () => {
  const t = await startRouter();
  try {
    const me = await userSession(t, "fix@example.com");
    const signin = await fetch(t.url + "/signin", {
      method: "POST",
      redirect: "manual",
      headers: { origin: t.url, cookie: me.headers().cookie },
      body: new URLSearchParams({ email: "fix@example.com", password: "password-fix@example.com" }),
    });
    await signin.body?.cancel();
    assert.equal(signin.status, 303);
    const setCookie = signin.headers.get("set-cookie") ?? "";
    assert.match(setCookie, /^__Host-session=[^;]+; Path=\/; HttpOnly; SameSite=Lax; .*Secure$/);
    const fresh = /^__Host-session=([^;]+)/.exec(setCookie)![1];
    assert.notEqual(fresh, me.token, "a new id");
    // The session the browser had before is gone.
    await json(await fetch(t.url + "/v1/credits", { headers: me.headers() }), 401);
    const cookie = `${SESSION_COOKIE}=${fresh}`;
    await json(await fetch(t.url + "/v1/credits", { headers: { cookie } }), 200);
    const page = await (await fetch(t.url + "/dashboard", { headers: { cookie } })).text();
    const csrf = /name="_csrf" value="([^"]+)"/.exec(page)![1];
    const out = await fetch(t.url + "/signout", {
      method: "POST",
      redirect: "manual",
      headers: { cookie, origin: t.url },
      body: new URLSearchParams({ _csrf: csrf }),
    });
    await out.body?.cancel();
    assert.equal(out.status, 303);
    assert.match(out.headers.get("set-cookie") ?? "", /Max-Age=0/);
    // The old cookie, replayed, is no session.
    await json(await fetch(t.url + "/v1/credits", { headers: { cookie } }), 401);
  } finally {
    await t.close();
  }
});

Deno.test("an account created with an Idempotency-Key keeps no management key in the clear in KV", async () => {
  const t = await startRouter();
  try {
    const first = await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "Sealed" }, { "idempotency-key": "s1" }),
      201,
    );
    const secret: string = first.management_key;
    for await (const e of t.kv.list({ prefix: [] })) {
      const text = JSON.stringify(e, (_k, v) => typeof v === "bigint" ? String(v) : v);
      assert.ok(!text.includes(secret), `the key is stored in the clear under ${String(e.key)}`);
      assert.ok(!text.includes(secret.slice(12)), String(e.key));
    }
    // The replay still gives the first answer, key included.
    const again = await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "Sealed" }, { "idempotency-key": "s1" }),
      201,
    );
    assert.deepEqual(again, first);
    await json(await t.call(again.management_key, "GET", "/v1/credits"), 200);
  } finally {
    await t.close();
  }
});

Deno.test("every dashboard page, error page included, carries the security headers", async () => {
  const t = await startRouter();
  try {
    const me = await userSession(t, "headers@example.com");
    const paths = [
      "/",
      "/signin",
      "/signup",
      "/dashboard",
      "/dashboard/usage",
      "/dashboard/keys",
      "/dashboard/audit",
      "/dashboard/audit?from=2026-02-30",
      "/dashboard/settings/billing",
      "/dashboard/settings/members",
      "/dashboard/admin/signin",
      "/dashboard/nothing-here",
      "/signout",
    ];
    for (const path of paths) {
      const res = await fetch(t.url + path, { headers: { cookie: me.headers().cookie } });
      await res.body?.cancel();
      const h = res.headers;
      assert.match(h.get("content-type") ?? "", /^text\/html/, path);
      assert.equal(h.get("x-content-type-options"), "nosniff", path);
      assert.equal(h.get("x-frame-options"), "DENY", path);
      assert.equal(h.get("referrer-policy"), "same-origin", path);
      const csp = h.get("content-security-policy") ?? "";
      assert.match(csp, /frame-ancestors 'none'/, path);
      assert.match(csp, /script-src 'self'(;|$)/, path);
      assert.doesNotMatch(csp, /unsafe-eval|script-src[^;]*unsafe-inline/, path);
    }
  } finally {
    await t.close();
  }
});

Deno.test("sign-in answers an unknown email exactly as a wrong password", async () => {
  const t = await startRouter();
  try {
    await userSession(t, "known@example.com");
    const attempt = async (email: string) => {
      const started = performance.now();
      const res = await fetch(t.url + "/signin", {
        method: "POST",
        headers: { origin: t.url },
        body: new URLSearchParams({ email, password: "not the password" }),
      });
      const html = (await res.text()).replaceAll(email, "EMAIL");
      return { status: res.status, html, ms: performance.now() - started };
    };
    await attempt("warmup@example.com");
    const known = await attempt("known@example.com");
    const unknown = await attempt("unknown@example.com");
    assert.equal(known.status, 401);
    assert.equal(unknown.status, known.status);
    assert.equal(unknown.html, known.html);
    // Both pay for one PBKDF2 verification (600,000 iterations).
    assert.ok(unknown.ms > known.ms / 3, `unknown ${unknown.ms} ms, known ${known.ms} ms`);
  } finally {
    await t.close();
  }
});

Deno.test("failed sign-ins of one email from many addresses lock that email only, known or not", async () => {
  // Each attempt comes through the proxy from another client, clear of the per-address limit.
  const t = await startRouter({
    env: { TRUSTED_PROXIES: "127.0.0.1, ::1" },
    now: windowAlignedClock(),
  });
  try {
    await userSession(t, "victim@example.com");
    await userSession(t, "bystander@example.com");
    let client = 0;
    const attempt = async (email: string, password: string) => {
      const res = await fetch(t.url + "/signin", {
        method: "POST",
        redirect: "manual",
        headers: { origin: t.url, "x-forwarded-for": `198.51.100.${++client}` },
        body: new URLSearchParams({ email, password }),
      });
      const html = (await res.text()).replaceAll(email, "EMAIL");
      return { status: res.status, retryAfter: res.headers.get("retry-after"), html };
    };
    const locked: Record<string, { status: number; retryAfter: string | null; html: string }> = {};
    for (const email of ["victim@example.com", "nobody@example.com"]) {
      for (let i = 0; i < SIGNIN_EMAIL_LIMIT; i++) {
        const spelled = i % 2 ? ` ${email.toUpperCase()} ` : email;
        assert.equal((await attempt(spelled, "wrong password")).status, 401, `${email} ${i}`);
      }
      // Now even the right password waits, and an unknown email is answered alike.
      locked[email] = await attempt(email, "password-" + email);
    }
    const victim = locked["victim@example.com"];
    assert.equal(victim.status, 429);
    const retryAfter = Number(victim.retryAfter);
    assert.ok(retryAfter > 0 && retryAfter <= 900, String(victim.retryAfter));
    assert.match(victim.html, /Too many sign-in attempts/);
    assert.equal(locked["nobody@example.com"].status, 429);
    assert.equal(locked["nobody@example.com"].html, victim.html);
    // Another user's sign-in is not held up by the failures of these emails.
    const bystander = await attempt("bystander@example.com", "password-bystander@example.com");
    assert.equal(bystander.status, 303);
  } finally {
    await t.close();
  }
});

Deno.test("the admin API refuses a wrong token and every router key", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    for (
      const auth of [
        "wrong",
        "test-admin-token-012345678",
        "test-admin-token-0123456789x",
        key,
        mgmt,
      ]
    ) {
      const res = await t.call(auth, "GET", "/v1/admin/accounts");
      assert.equal((await json(res, 401)).error.code, "invalid_api_key", auth);
    }
    const me = await userSession(t, "notadmin@example.com");
    const res = await fetch(t.url + "/v1/admin/accounts", { headers: me.headers() });
    await json(res, 401);
    const page = await fetch(t.url + "/dashboard/admin", {
      headers: me.headers(),
      redirect: "manual",
    });
    await page.body?.cancel();
    assert.equal(page.status, 303);
  } finally {
    await t.close();
  }
});

Deno.test("an operator session ends when ADMIN_TOKEN changes: refused after a restart with another token", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const OLD = "old-admin-token-0123456789";
  const NEW = "new-admin-token-9876543210";
  /** The status and Location of the admin page for `cookie` on a router with `token`. */
  const adminPage = async (token: string, cookie: string) => {
    const t = await startRouter({ kvPath, env: { ADMIN_TOKEN: token } });
    try {
      const res = await fetch(t.url + "/dashboard/admin", {
        headers: { cookie },
        redirect: "manual",
      });
      await res.body?.cancel();
      return [res.status, res.headers.get("location")];
    } finally {
      await t.close();
    }
  };
  try {
    let cookie: string;
    const t = await startRouter({ kvPath, env: { ADMIN_TOKEN: OLD } });
    try {
      const signin = await fetch(t.url + "/dashboard/admin/signin", {
        method: "POST",
        redirect: "manual",
        headers: { "content-type": "application/x-www-form-urlencoded", origin: t.url },
        body: new URLSearchParams({ token: OLD }),
      });
      await signin.body?.cancel();
      assert.equal(signin.status, 303);
      cookie = signin.headers.get("set-cookie")!.split(";")[0];
    } finally {
      await t.close();
    }
    // A restart with the same token keeps the session; the token changed, it is refused (and
    // stays refused), as is a session that names no token at all.
    assert.deepEqual(await adminPage(OLD, cookie), [200, null]);
    assert.deepEqual(await adminPage(NEW, cookie), [303, "/dashboard/admin/signin"]);
    assert.deepEqual(await adminPage(NEW, cookie), [303, "/dashboard/admin/signin"]);
    const kv = await Deno.openKv(kvPath);
    let untagged: string;
    try {
      untagged = (await createSession(kv, { kind: "admin" }, Date.now())).token;
    } finally {
      kv.close();
    }
    assert.deepEqual(
      await adminPage(NEW, `${SESSION_COOKIE}=${untagged}`),
      [303, "/dashboard/admin/signin"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
