import assert from "node:assert/strict";
import { ADMIN_TOKEN, json, startRouter, userSession } from "../_helpers.ts";

/** Asserts that no cache along the way may keep the reply (RFC 9111 `no-store`). */
function assertNoStore(res: Response, what: string) {
  assert.equal(res.headers.get("cache-control"), "no-store", what);
}

Deno.test("every reply carrying a secret is Cache-Control: no-store, replays included", async () => {
  const t = await startRouter();
  try {
    const created = await t.admin("POST", "/v1/admin/accounts", { name: "Secrets" });
    assertNoStore(created, "account creation (the management key)");
    const { management_key: mgmt } = await json(created, 201);

    const idem = { "idempotency-key": "acct-secret-1" };
    const first = await t.admin("POST", "/v1/admin/accounts", { name: "Once" }, idem);
    assertNoStore(first, "account creation with an Idempotency-Key");
    const firstBody = await json(first, 201);
    const again = await t.admin("POST", "/v1/admin/accounts", { name: "Once" }, idem);
    assertNoStore(again, "its replay");
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.equal((await json(again, 201)).management_key, firstBody.management_key);

    for (const scope of ["inference", "management"]) {
      const key = await t.call(mgmt, "POST", "/v1/keys", { name: scope, scope });
      assertNoStore(key, `a new ${scope} key`);
      assert.match((await json(key, 201)).key, /^er-/);
    }

    // The pages (the keys page shows a new key's secret) and the sign-ins that set a session
    // cookie.
    const user = await userSession(t, "secrets@example.com");
    const keysPage = await fetch(`${t.url}/dashboard/keys`, { headers: user.headers() });
    assertNoStore(keysPage, "the keys page");
    await keysPage.body?.cancel();
    const signin = await fetch(`${t.url}/signin`, {
      method: "POST",
      redirect: "manual",
      headers: { origin: t.url },
      body: new URLSearchParams({
        email: "secrets@example.com",
        password: "password-secrets@example.com",
      }),
    });
    await signin.body?.cancel();
    assert.equal(signin.status, 303);
    assert.match(signin.headers.get("set-cookie") ?? "", /session=/);
    assertNoStore(signin, "the sign-in that sets the session cookie");
    const operator = await fetch(`${t.url}/dashboard/admin/signin`, {
      method: "POST",
      redirect: "manual",
      headers: { origin: t.url },
      body: new URLSearchParams({ token: ADMIN_TOKEN }),
    });
    await operator.body?.cancel();
    assert.equal(operator.status, 303);
    assert.match(operator.headers.get("set-cookie") ?? "", /session=/);
    assertNoStore(operator, "the operator's sign-in");
  } finally {
    await t.close();
  }
});
