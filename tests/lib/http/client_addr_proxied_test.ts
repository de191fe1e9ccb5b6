import assert from "node:assert/strict";
import { json, startRouter, type TestRouter, windowAlignedClock } from "../../_helpers.ts";
import { SIGNIN_LIMIT } from "../../../lib/auth/sessions.ts";

/** A failed sign-in as sent through a proxy that says the client is `forwardedFor`. */
async function failSignin(t: TestRouter, forwardedFor: string) {
  const res = await fetch(t.url + "/signin", {
    method: "POST",
    redirect: "manual",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      origin: t.url,
      "x-forwarded-for": forwardedFor,
    },
    body: new URLSearchParams({ email: "nobody@example.com", password: "wrong password" }),
  });
  await res.body?.cancel();
  return res.status;
}

Deno.test("behind a trusted proxy the sign-in limit applies per forwarded client", async () => {
  // The test client connects from loopback: here loopback is the proxy.
  const t = await startRouter({
    env: { TRUSTED_PROXIES: "127.0.0.1, ::1" },
    now: windowAlignedClock(),
  });
  try {
    for (let i = 0; i < SIGNIN_LIMIT; i++) assert.equal(await failSignin(t, "203.0.113.7"), 401);
    assert.equal(await failSignin(t, "203.0.113.7"), 429, "this client has used its attempts");
    // Entries the client itself sends are left of the one the proxy appends: no way out.
    assert.equal(await failSignin(t, "198.51.100.1, 203.0.113.7"), 429);
    // Another client behind the same proxy is not locked out.
    assert.equal(await failSignin(t, "203.0.113.8"), 401);
    assert.equal(await failSignin(t, "198.51.100.1, 203.0.113.8, 127.0.0.1"), 401);
  } finally {
    await t.close();
  }
});

Deno.test("behind a trusted proxy an IPv6 client is limited by its /64, not its address", async () => {
  const t = await startRouter({
    env: { TRUSTED_PROXIES: "127.0.0.1, ::1" },
    now: windowAlignedClock(),
  });
  try {
    for (let i = 0; i < SIGNIN_LIMIT; i++) {
      assert.equal(await failSignin(t, `2001:db8:aa:bb::${i + 1}`), 401);
    }
    assert.equal(await failSignin(t, "[2001:db8:aa:bb:1234:5678:9abc:def0]:443"), 429);
    // The neighbouring /64 is someone else.
    assert.equal(await failSignin(t, "2001:db8:aa:bc::1"), 401);
  } finally {
    await t.close();
  }
});

Deno.test("the operator sign-in is limited per IPv6 /64 too", async () => {
  const t = await startRouter({
    env: { TRUSTED_PROXIES: "127.0.0.1, ::1" },
    now: windowAlignedClock(),
  });
  try {
    const adminSignin = async (forwardedFor: string) => {
      const res = await fetch(t.url + "/dashboard/admin/signin", {
        method: "POST",
        redirect: "manual",
        headers: { origin: t.url, "x-forwarded-for": forwardedFor },
        body: new URLSearchParams({ token: "not the admin token" }),
      });
      await res.body?.cancel();
      return res.status;
    };
    for (let i = 0; i < SIGNIN_LIMIT; i++) {
      assert.equal(await adminSignin(`2001:db8:cc:dd::${i + 1}`), 401);
    }
    assert.equal(await adminSignin("2001:db8:cc:dd:ffff::1"), 429);
    assert.equal(await adminSignin("2001:db8:cc:de::1"), 401);
  } finally {
    await t.close();
  }
});

Deno.test("from an untrusted address X-Forwarded-For is ignored: a spoofed header changes nothing", async () => {
  for (const env of [{}, { TRUSTED_PROXIES: "10.9.9.9" }] as Record<string, string>[]) {
    const t = await startRouter({ env, now: windowAlignedClock() });
    try {
      for (let i = 0; i < SIGNIN_LIMIT; i++) {
        assert.equal(await failSignin(t, `203.0.113.${i + 1}`), 401);
      }
      // Every attempt counted against the socket address, whatever the header claimed.
      assert.equal(await failSignin(t, "203.0.113.200"), 429, JSON.stringify(env));
    } finally {
      await t.close();
    }
  }
});

Deno.test("the audit row's client_ip is the same client address the sign-in limit uses", async () => {
  const cases: [Record<string, string>, string][] = [
    [{ TRUSTED_PROXIES: "127.0.0.1" }, "203.0.113.7"],
    [{}, "127.0.0.1"],
  ];
  for (const [env, expected] of cases) {
    const t = await startRouter({ env, now: windowAlignedClock() });
    try {
      const { mgmt, key } = await t.account("1");
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 10,
      }, { "x-forwarded-for": "6.6.6.6, 203.0.113.7" });
      await json(res, 200);
      await t.router.flush();
      const rows = (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data;
      assert.deepEqual(rows.map((r: { client_ip: string }) => r.client_ip), [expected]);
      await t.assertBooks();
    } finally {
      await t.close();
    }
  }
});
