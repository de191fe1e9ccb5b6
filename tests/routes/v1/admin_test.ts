import assert from "node:assert/strict";
import { newId } from "../../../lib/ids.ts";
import { ADMIN_TOKEN, json, startRouter } from "../../_helpers.ts";
import { hashSecret } from "../../../lib/crypto.ts";
import { idemKey } from "../../../lib/kv/schema.ts";

Deno.test("admin: accounts are created, listed and read with their balances", async () => {
  const t = await startRouter();
  try {
    const created = await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "Acme", email: "ops@acme.test" }),
      201,
    );
    assert.match(created.id, /^acct_/);
    assert.equal(created.name, "Acme");
    assert.match(created.management_key, /^er-[A-Za-z0-9_-]{43}$/);
    const one = await json(await t.admin("GET", `/v1/admin/accounts/${created.id}`), 200);
    assert.equal(one.balance, "0");
    assert.equal(one.email, "ops@acme.test");
    const all = await json(await t.admin("GET", "/v1/admin/accounts"), 200);
    assert.ok(all.data.some((a: { id: string }) => a.id === created.id));
    // The first management key works on the management API.
    await json(await t.call(created.management_key, "GET", "/v1/credits"), 200);

    const bad = await json(await t.admin("POST", "/v1/admin/accounts", { name: "" }), 400);
    assert.match(bad.error.message, /'name'/);
    const badEmail = await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "x", email: "not-an-email" }),
      400,
    );
    assert.match(badEmail.error.message, /'email'/);
    // A well-formed id of no account is 404; text of another shape is 400.
    await json(await t.admin("GET", `/v1/admin/accounts/${newId("acct")}`), 404);
    const malformed = await json(await t.admin("GET", "/v1/admin/accounts/acct_nope"), 400);
    assert.match(malformed.error.message, /'id'/);
    const noToken = await fetch(`${t.url}/v1/admin/accounts`);
    assert.equal((await json(noToken, 401)).error.code, "invalid_api_key");
    const wrong = await t.call(ADMIN_TOKEN + "x", "GET", "/v1/admin/accounts");
    assert.equal((await json(wrong, 401)).error.code, "invalid_api_key");
  } finally {
    await t.close();
  }
});

Deno.test("admin: adjustments (negative too) and refunds move the balance through the ledger", async () => {
  const t = await startRouter();
  try {
    const { id, mgmt } = await t.account("0");
    const path = `/v1/admin/accounts/${id}`;
    const up = await json(
      await t.admin("POST", `${path}/adjustments`, { amount: "10.5", reason: "welcome" }),
      201,
    );
    assert.equal(up.type, "adjustment");
    assert.equal(up.amount, "10.5");
    assert.equal(up.balance_after, "10.5");
    const down = await json(
      await t.admin("POST", `${path}/adjustments`, { amount: "-0.000000001", reason: "fix" }),
      201,
    );
    assert.equal(down.amount, "-0.000000001");
    assert.equal(down.balance_after, "10.499999999");
    const refund = await json(
      await t.admin("POST", `${path}/refunds`, {
        amount: "0.25",
        reason: "billed in error",
        reference: "req_123",
      }),
      201,
    );
    assert.equal(refund.type, "refund");
    assert.equal(refund.amount, "0.25");
    assert.equal(refund.reference, "req_123");
    assert.equal(refund.balance_after, "10.749999999");

    for (
      const [sub, body, field] of [
        ["adjustments", { amount: "0", reason: "x" }, "amount"],
        ["adjustments", { amount: "1e3", reason: "x" }, "amount"],
        ["adjustments", { amount: "1.0000000001", reason: "x" }, "amount"],
        ["adjustments", { amount: "5" }, "reason"],
        ["adjustments", { amount: "5", reason: "x", extra: 1 }, "body"],
        ["refunds", { amount: "-1", reason: "x" }, "amount"],
      ] as const
    ) {
      const res = await json(await t.admin("POST", `${path}/${sub}`, body), 400);
      assert.equal(res.error.code, "invalid_request");
      if (field !== "body") assert.match(res.error.message, new RegExp(`'${field}'`));
    }
    await json(
      await t.admin("POST", `/v1/admin/accounts/${newId("acct")}/adjustments`, {
        amount: "1",
        reason: "x",
      }),
      404,
    );

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "10.749999999");
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions"), 200);
    assert.deepEqual(tx.data.map((e: { type: string }) => e.type), [
      "refund",
      "adjustment",
      "adjustment",
    ]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("admin: Idempotency-Key replays the first answer; another body is 409", async () => {
  const t = await startRouter();
  try {
    const { id, mgmt } = await t.account("0");
    const path = `/v1/admin/accounts/${id}/adjustments`;
    const body = { amount: "5", reason: "promo" };
    const first = await json(await t.admin("POST", path, body, { "idempotency-key": "k1" }), 201);
    const againRes = await t.admin("POST", path, body, { "idempotency-key": "k1" });
    assert.equal(againRes.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await json(againRes, 201), first);
    // The same parameters written differently (spacing, key order) are the same request.
    const respelled = await t.admin(
      "POST",
      path,
      '{ "reason" : "promo",\n  "amount": "5" }',
      { "idempotency-key": "k1" },
    );
    assert.equal(respelled.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await json(respelled, 201), first);
    // A reply stored before bodies were compared by their parameters (under the bytes' hash)
    // still replays for those bytes.
    const older = '{"reason":"older","amount":"7"}';
    const stored = { hash: await hashSecret(older), status: 201, body: { id: "stored-earlier" } };
    await t.kv.set(idemKey(`admin:adjustment:${id}`, "k-old"), stored);
    const olderRes = await t.admin("POST", path, older, { "idempotency-key": "k-old" });
    assert.equal(olderRes.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await json(olderRes, 201), { id: "stored-earlier" });
    const conflict = await json(
      await t.admin("POST", path, { amount: "6", reason: "promo" }, { "idempotency-key": "k1" }),
      409,
    );
    assert.equal(conflict.error.code, "idempotency_conflict");

    // Ten racing retries of one key credit once.
    const racing = await Promise.all(
      Array.from(
        { length: 10 },
        () =>
          t.admin("POST", path, { amount: "1", reason: "race" }, { "idempotency-key": "k2" })
            .then((r) => json(r, 201)),
      ),
    );
    assert.equal(new Set(racing.map((r) => r.id)).size, 1);

    // The same key on refunds is another scope: a separate write.
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/refunds`, { amount: "5", reason: "promo" }, {
        "idempotency-key": "k1",
      }),
      201,
    );
    const acct1 = await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "Once" }, { "idempotency-key": "a1" }),
      201,
    );
    const acct2 = await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "Once" }, { "idempotency-key": "a1" }),
      201,
    );
    assert.deepEqual(acct2, acct1);
    await json(
      await t.admin("POST", "/v1/admin/accounts", { name: "Twice" }, { "idempotency-key": "a1" }),
      409,
    );
    // Racing creations with one key make one account.
    const raced = await Promise.all(
      Array.from(
        { length: 8 },
        () =>
          t.admin("POST", "/v1/admin/accounts", { name: "Race" }, { "idempotency-key": "a2" })
            .then((r) => json(r, 201)),
      ),
    );
    assert.equal(new Set(raced.map((a) => a.id)).size, 1);
    const accounts = await json(await t.admin("GET", "/v1/admin/accounts"), 200);
    assert.equal(accounts.data.filter((a: { name: string }) => a.name === "Race").length, 1);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "11");
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions"), 200);
    assert.equal(tx.data.length, 3);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("admin: /v1/admin/verify reports balanced books", async () => {
  const t = await startRouter();
  try {
    const { key } = await t.account("1");
    await t.account("2");
    await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
      }),
      200,
    );
    await t.router.flush();
    const v = await json(await t.admin("GET", "/v1/admin/verify"), 200);
    assert.deepEqual(v, { ok: true, accounts_checked: 2, pending_events: 0, differences: [] });
  } finally {
    await t.close();
  }
});
