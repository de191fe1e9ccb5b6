import assert from "node:assert/strict";
import {
  checkCsrf,
  countSigninAttempt,
  countSigninFailure,
  createSession,
  deleteSession,
  getSession,
  SESSION_COOKIE,
  SESSION_TTL_MS,
  sessionCookie,
  sessionToken,
  SIGNIN_EMAIL_LIMIT,
  SIGNIN_LIMIT,
} from "../../../lib/auth/sessions.ts";
import { signUp } from "../../../lib/onboarding.ts";
import { json, startRouter } from "../../_helpers.ts";

Deno.test("sessions are found by token, end at their deadline and on delete", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const now = Date.now();
    const { token, session } = await createSession(kv, { kind: "user", user_id: "u" }, now);
    assert.equal((await getSession(kv, token, now + 1000))?.csrf, session.csrf);
    assert.equal(await getSession(kv, token, now + SESSION_TTL_MS + 1), null, "expired");
    assert.equal(await getSession(kv, token + "x", now), null);
    assert.equal(await getSession(kv, undefined, now), null);
    // Only the token's hash is a key: the token itself is nowhere in KV.
    for await (const e of kv.list({ prefix: [] })) {
      assert.ok(!JSON.stringify(e.key).includes(token));
    }
    await deleteSession(kv, token);
    assert.equal(await getSession(kv, token, now), null);
  } finally {
    kv.close();
  }
});

Deno.test("sessionCookie is __Host-, HttpOnly, SameSite=Lax, Secure over https and loopback", () => {
  const https = sessionCookie("https://router.example/x", "tok", 60);
  assert.match(https, /^__Host-session=tok; Path=\/; HttpOnly; SameSite=Lax; Max-Age=60; Secure$/);
  assert.match(sessionCookie("http://127.0.0.1:8000/", "tok", 60), /^__Host-session=.*Secure$/);
  const plain = sessionCookie("http://10.0.0.5:8000/", "tok", 60);
  assert.ok(plain.startsWith("session=tok") && !plain.includes("Secure"));
  const req = new Request("http://x/", { headers: { cookie: `a=1; ${SESSION_COOKIE}=abc` } });
  assert.equal(sessionToken(req), "abc");
});

Deno.test("checkCsrf needs this origin and the session's token", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { session } = await createSession(kv, { kind: "user" }, Date.now());
    const req = (headers: Record<string, string>) =>
      new Request("http://127.0.0.1:8000/v1/keys", { method: "POST", headers });
    const t = session.csrf;
    assert.equal(checkCsrf(req({ origin: "http://127.0.0.1:8000" }), session, t), true);
    assert.equal(checkCsrf(req({ "sec-fetch-site": "same-origin" }), session, t), true);
    assert.equal(checkCsrf(req({}), session, t), true, "old clients: the token decides");
    assert.equal(checkCsrf(req({ origin: "http://evil.example" }), session, t), false);
    assert.equal(checkCsrf(req({ "sec-fetch-site": "cross-site" }), session, t), false);
    assert.equal(checkCsrf(req({ "sec-fetch-site": "same-site" }), session, t), false);
    assert.equal(checkCsrf(req({ origin: "http://127.0.0.1:8000" }), session, "wrong"), false);
    assert.equal(checkCsrf(req({ origin: "http://127.0.0.1:8000" }), session, null), false);
    assert.equal(
      checkCsrf(req({ origin: "https://public.example" }), session, t, ["https://public.example"]),
      true,
    );
  } finally {
    kv.close();
  }
});

Deno.test("countSigninAttempt allows SIGNIN_LIMIT attempts per IP per window", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const now = Date.UTC(2026, 0, 1, 12, 0, 0);
    for (let i = 0; i < SIGNIN_LIMIT; i++) {
      assert.equal((await countSigninAttempt(kv, "10.0.0.1", now)).ok, true);
    }
    const refused = await countSigninAttempt(kv, "10.0.0.1", now + 1000);
    assert.equal(refused.ok, false);
    assert.ok(refused.retryAfterS > 0 && refused.retryAfterS <= 300);
    assert.equal((await countSigninAttempt(kv, "10.0.0.2", now)).ok, true, "per IP");
    assert.equal((await countSigninAttempt(kv, "10.0.0.1", now + 300_000)).ok, true, "next window");
  } finally {
    kv.close();
  }
});

Deno.test("countSigninAttempt counts an IPv6 client by its /64, IPv4 and IPv4-mapped by the address", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const now = Date.UTC(2026, 0, 1, 12, 0, 0);
    // One customer's /64 holds 2^64 addresses: a new one for every attempt is no way out.
    for (let i = 0; i < SIGNIN_LIMIT; i++) {
      const ip = `2001:db8:1:2:${(i + 1).toString(16)}::${i + 7}`;
      assert.equal((await countSigninAttempt(kv, ip, now)).ok, true, ip);
    }
    assert.equal((await countSigninAttempt(kv, "2001:DB8:1:2:ffff:ffff:ffff:ffff", now)).ok, false);
    assert.equal((await countSigninAttempt(kv, "[2001:db8:1:2::1]", now)).ok, false);
    assert.equal((await countSigninAttempt(kv, "2001:db8:1:3::1", now)).ok, true, "next /64");

    for (let i = 0; i < SIGNIN_LIMIT; i++) {
      const ip = i % 2 ? "::ffff:192.0.2.1" : "192.0.2.1";
      assert.equal((await countSigninAttempt(kv, ip, now)).ok, true);
    }
    assert.equal((await countSigninAttempt(kv, "::ffff:c000:201", now)).ok, false, "mapped");
    assert.equal((await countSigninAttempt(kv, "192.0.2.2", now)).ok, true, "per IPv4 address");
  } finally {
    kv.close();
  }
});

Deno.test("countSigninFailure allows SIGNIN_EMAIL_LIMIT failures per email, and counts no success", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const now = Date.UTC(2026, 0, 1, 12, 0, 0);
    // Successes are taken back: however many, they use up nothing.
    for (let i = 0; i < SIGNIN_EMAIL_LIMIT + 5; i++) {
      const ok = await countSigninFailure(kv, "victim@example.com", now);
      assert.equal(ok.ok, true);
      await ok.succeeded();
    }
    for (let i = 0; i < SIGNIN_EMAIL_LIMIT; i++) {
      const email = i % 2 ? "  Victim@Example.COM " : "victim@example.com";
      assert.equal((await countSigninFailure(kv, email, now)).ok, true, `failure ${i + 1}`);
    }
    const refused = await countSigninFailure(kv, "VICTIM@example.com", now + 1000);
    assert.equal(refused.ok, false);
    assert.ok(refused.retryAfterS > 0 && refused.retryAfterS <= 900, String(refused.retryAfterS));
    assert.equal((await countSigninFailure(kv, "other@example.com", now)).ok, true, "per email");
    assert.equal((await countSigninFailure(kv, "victim@example.com", now + 900_000)).ok, true);
    // The email is in no key, only its hash.
    for await (const { key } of kv.list({ prefix: [] })) {
      assert.ok(!JSON.stringify(key).toLowerCase().includes("example.com"), JSON.stringify(key));
    }
  } finally {
    kv.close();
  }
});

Deno.test("a dashboard session calls the management API; writes need the CSRF token", async () => {
  const t = await startRouter();
  try {
    const a = await signUp(t.kv, {
      email: "a@example.com",
      name: "A",
      password: "password-a-123",
      accountName: "A Co",
    }, Date.now());
    assert.ok(a);
    const { token, session } = await createSession(t.kv, {
      kind: "user",
      user_id: a.user.id,
      account_id: a.account.id,
    }, Date.now());
    const cookie = `${SESSION_COOKIE}=${token}`;
    const call = (method: string, path: string, headers: Record<string, string>, body?: unknown) =>
      fetch(t.url + path, {
        method,
        headers: { cookie, "content-type": "application/json", ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    assert.equal((await json(await call("GET", "/v1/credits", {}), 200)).balance, "0");

    const noToken = await json(
      await call("POST", "/v1/keys", { origin: t.url }, { name: "k" }),
      403,
    );
    assert.equal(noToken.error.code, "forbidden");
    const crossSite = await call("POST", "/v1/keys", {
      origin: "http://evil.example",
      "x-csrf-token": session.csrf,
    }, { name: "k" });
    await json(crossSite, 403);
    const created = await json(
      await call("POST", "/v1/keys", { origin: t.url, "x-csrf-token": session.csrf }, {
        name: "k",
      }),
      201,
    );
    assert.match(created.key, /^er-/);
    const keys = await json(await call("GET", "/v1/keys", {}), 200);
    assert.ok(keys.data.some((k: { id: string }) => k.id === created.id));

    // Another account's key is invisible to this session.
    const other = await t.account("1");
    await json(await call("GET", `/v1/keys/${other.keyId}`, {}), 404);
    // A session never opens the inference API.
    const inf = await call("POST", "/v1/chat/completions", {
      origin: t.url,
      "x-csrf-token": session.csrf,
    }, { model: "gpt-4o-mini", messages: [] });
    await json(inf, 401);
    // Signed out: the cookie is worth nothing.
    await deleteSession(t.kv, token);
    await json(await call("GET", "/v1/credits", {}), 401);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
