import assert from "node:assert/strict";
import { json, startRouter } from "../../_helpers.ts";
import { hashSecret } from "../../../lib/crypto.ts";

Deno.test("management keys: create, list, read, update, revoke", async () => {
  const t = await startRouter();
  try {
    const { mgmt, keyId } = await t.account("1");
    const created = await json(
      await t.call(mgmt, "POST", "/v1/keys", {
        name: "CI runner",
        credit_limit: "2.5",
        limit_reset: "monthly",
        rate_limit_rpm: 60,
        expires_at: "2099-01-01T00:00:00Z",
      }),
      201,
    );
    assert.match(created.key, /^er-[A-Za-z0-9_-]{43}$/, "er- and 256 random bits");
    assert.equal(created.prefix, created.key.slice(0, 10));
    assert.equal(created.scope, "inference");
    assert.equal(created.credit_limit, "2.5");
    assert.equal(created.limit_reset, "monthly");
    assert.equal(created.rate_limit_rpm, 60);
    assert.equal(created.expires_at, "2099-01-01T00:00:00.000Z");
    assert.equal(created.spend, "0");

    // Only the hash is stored: the secret is nowhere in KV.
    for await (const e of t.kv.list({ prefix: [] })) {
      assert.ok(
        !JSON.stringify(e, (_k, v) => typeof v === "bigint" ? String(v) : v).includes(created.key),
      );
    }
    assert.equal((await t.kv.get(["key_hash", await hashSecret(created.key)])).value, created.id);

    const list = await json(await t.call(mgmt, "GET", "/v1/keys"), 200);
    const ids = list.data.map((k: { id: string }) => k.id);
    assert.ok(ids.includes(created.id) && ids.includes(keyId));
    assert.ok(list.data.every((k: Record<string, unknown>) => !("key" in k) && !("hash" in k)));

    const patched = await json(
      await t.call(mgmt, "PATCH", `/v1/keys/${created.id}`, {
        name: "CI",
        credit_limit: null,
        limit_reset: null,
      }),
      200,
    );
    assert.equal(patched.name, "CI");
    assert.equal(patched.credit_limit, null);
    const badPatch = await json(
      await t.call(mgmt, "PATCH", `/v1/keys/${created.id}`, { limit_reset: "daily" }),
      400,
    );
    assert.match(badPatch.error.message, /limit_reset/);
    await json(await t.call(mgmt, "PATCH", `/v1/keys/${created.id}`, { scope: "management" }), 400);

    const self = await json(await t.call(created.key, "GET", "/v1/key"), 200);
    assert.equal(self.id, created.id);
    assert.equal(self.name, "CI");
    assert.equal(self.remaining, null);

    await json(await t.call(mgmt, "DELETE", `/v1/keys/${created.id}`), 200);
    const after = await json(await t.call(mgmt, "GET", "/v1/keys"), 200);
    assert.ok(
      !after.data.some((k: { id: string }) => k.id === created.id),
      "revoked keys are not listed",
    );
    await json(await t.call(created.key, "GET", "/v1/key"), 401);

    for (
      const [body, field] of [
        [{}, "name"],
        [{ name: "x", scope: "root" }, "scope"],
        [{ name: "x", credit_limit: "-1" }, "credit_limit"],
        [{ name: "x", credit_limit: "abc" }, "credit_limit"],
        [{ name: "x", limit_reset: "daily" }, "limit_reset"],
        [{ name: "x", expires_at: "2001-01-01T00:00:00Z" }, "expires_at"],
        [{ name: "x", rate_limit_rpm: 0 }, "rate_limit_rpm"],
      ] as const
    ) {
      const res = await json(await t.call(mgmt, "POST", "/v1/keys", body), 400);
      assert.match(res.error.message, new RegExp(field), JSON.stringify(body));
    }

    // A management key made through the API manages; it cannot call inference.
    const m2 = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "ops", scope: "management" }),
      201,
    );
    await json(await t.call(m2.key, "GET", "/v1/keys"), 200);
  } finally {
    await t.close();
  }
});
