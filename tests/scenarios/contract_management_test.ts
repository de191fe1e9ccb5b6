// The management and admin API against API.md's contract, point by point, where no other test
// proves it: cursors, periods, the key object, limits, amounts, ADMIN_TOKEN unset.
import assert from "node:assert/strict";
import { newId } from "../../lib/ids.ts";
import { json, kvSnapshot, startRouter } from "../_helpers.ts";
import { parseUsd } from "../../lib/money.ts";

async function expectError(res: Response, status: number, code: string, names?: string) {
  const body = await json(res, status);
  assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "type"]);
  assert.equal(body.error.code, code, JSON.stringify(body));
  assert.equal(typeof body.error.type, "string");
  if (names) assert.ok(body.error.message.includes(names), body.error.message);
  return body;
}

Deno.test("paging: a cursor the endpoint never returned is 400 naming 'cursor', never a 500", async () => {
  const t = await startRouter();
  try {
    const { id, mgmt } = await t.account("1");
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, { amount: "1", reason: "x" }),
      201,
    );
    const before = await kvSnapshot(t);
    // Each passes the cursor's character set yet is no cursor either endpoint gave out.
    for (const cursor of ["abc", "A", "eDE", "AngxAA"]) {
      for (const path of ["/v1/transactions", "/v1/audit"]) {
        const res = await t.call(mgmt, "GET", `${path}?cursor=${cursor}`);
        await expectError(res, 400, "invalid_request", "'cursor'");
      }
    }
    // A real cursor still pages.
    const first = await json(await t.call(mgmt, "GET", "/v1/transactions?limit=1"), 200);
    assert.equal(first.data.length, 1);
    assert.equal(typeof first.next_cursor, "string");
    const next = await json(
      await t.call(
        mgmt,
        "GET",
        `/v1/transactions?limit=1&cursor=${encodeURIComponent(first.next_cursor)}`,
      ),
      200,
    );
    assert.equal(next.data.length, 1);
    assert.notEqual(next.data[0].id, first.data[0].id);
    assert.equal(next.next_cursor, null);
    assert.deepEqual(await kvSnapshot(t), before, "nothing written");
  } finally {
    await t.close();
  }
});

Deno.test("periods: an impossible calendar date is 400 naming the parameter, not another day", async () => {
  const t = await startRouter();
  try {
    const { mgmt, keyId } = await t.account("1");
    const cases: [string, string][] = [
      ["/v1/usage?from=2026-02-30", "'from'"],
      ["/v1/usage?from=2026-01-01&to=2026-04-31", "'to'"],
      ["/v1/usage?from=2026-02-29T10:00:00Z&to=2026-03-05", "'from'"],
      [`/v1/keys/${keyId}/usage?from=2026-06-31`, "'from'"],
      ["/v1/audit?from=2026-02-30", "'from'"],
      ["/v1/audit?to=2026-09-31T00:00:00Z", "'to'"],
      ["/v1/audit/export?format=json&from=2026-11-31", "'from'"],
    ];
    for (const [path, name] of cases) {
      await expectError(await t.call(mgmt, "GET", path), 400, "invalid_request", name);
    }
    // Leap days that exist are fine.
    await json(await t.call(mgmt, "GET", "/v1/usage?from=2028-02-29&to=2028-02-29"), 200);
    await json(await t.call(mgmt, "GET", "/v1/audit?from=2028-02-29T10:00:00Z"), 200);
  } finally {
    await t.close();
  }
});

Deno.test("periods: a time without a zone is UTC, whatever the server's local time zone", async () => {
  // The server's zone is the process's: a child process in Tokyo (UTC+9) parses the parameters.
  const code = `
    import { parseTime, usageParams } from "./lib/http/params.ts";
    const q = { from: "2030-03-01T10:00", to: "2030-03-01T14:00:00" };
    const u = usageParams((n) => q[n], Date.parse("2030-03-05T00:00:00Z"));
    console.log(JSON.stringify([
      new Date(parseTime("from", "2030-03-01T10:00")).toISOString(),
      new Date(parseTime("to", "2030-03-01 10:00:00.250")).toISOString(),
      new Date(parseTime("to", "2030-03-01T10:00:00+02:00")).toISOString(),
      new Date(u.fromMs).toISOString(),
      new Date(u.toMs).toISOString(),
    ]));
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { TZ: "Asia/Tokyo", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, stderr);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), [
    "2030-03-01T10:00:00.000Z",
    "2030-03-01T10:00:00.250Z",
    "2030-03-01T08:00:00.000Z",
    "2030-03-01T10:00:00.000Z",
    "2030-03-01T14:00:00.000Z",
  ]);
});

Deno.test("keys: expires_at must be a real day; a time without a zone is UTC", async () => {
  const t = await startRouter();
  try {
    const { mgmt, keyId } = await t.account("1");
    const before = await kvSnapshot(t);
    for (const expires_at of ["2099-02-30T00:00:00Z", "2099-04-31", "2099-13-01T00:00:00Z"]) {
      await expectError(
        await t.call(mgmt, "POST", "/v1/keys", { name: "x", expires_at }),
        400,
        "invalid_request",
        "'expires_at'",
      );
      await expectError(
        await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { expires_at }),
        400,
        "invalid_request",
        "'expires_at'",
      );
    }
    assert.deepEqual(await kvSnapshot(t), before, "nothing written");
    const created = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "x", expires_at: "2099-03-01T10:00" }),
      201,
    );
    assert.equal(created.expires_at, "2099-03-01T10:00:00.000Z");
    const patched = await json(
      await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { expires_at: "2099-02-28" }),
      200,
    );
    assert.equal(patched.expires_at, "2099-02-28T00:00:00.000Z");
  } finally {
    await t.close();
  }
});

const KEY_FIELDS = [
  "id",
  "name",
  "scope",
  "prefix",
  "created_at",
  "last_used_at",
  "disabled",
  "credit_limit",
  "limit_reset",
  "expires_at",
  "rate_limit_rpm",
  "spend",
];

const chat = (extra: Record<string, unknown> = {}) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 8,
  ...extra,
});

Deno.test("keys: every field of the key object; each PATCH takes effect on the next request", async () => {
  const t = await startRouter();
  try {
    const { mgmt, key, keyId } = await t.account("1");
    const get = async () => await json(await t.call(mgmt, "GET", `/v1/keys/${keyId}`), 200);
    const fresh = await get();
    for (const f of KEY_FIELDS) assert.ok(f in fresh, `key object has ${f}`);
    assert.equal(fresh.last_used_at, null);
    assert.equal(fresh.spend, "0");
    assert.equal(fresh.disabled, false);
    const listed = await json(await t.call(mgmt, "GET", "/v1/keys"), 200);
    assert.deepEqual(listed.data.find((k: { id: string }) => k.id === keyId), fresh);

    // Used once: last_used_at and spend follow.
    await json(await t.call(key, "POST", "/v1/chat/completions", chat()), 200);
    await t.router.flush();
    const used = await get();
    assert.match(used.last_used_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.ok(parseUsd(used.spend)! > 0n);

    const patch = async (body: Record<string, unknown>) =>
      await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, body), 200);
    // credit_limit set (as a JSON number too): the next request is held against it.
    assert.equal((await patch({ credit_limit: 0 })).credit_limit, "0");
    await expectError(
      await t.call(key, "POST", "/v1/chat/completions", chat()),
      402,
      "key_limit_exceeded",
    );
    // With a reset period, then both cleared: unlimited again.
    const reset = await patch({ credit_limit: "0.000000001", limit_reset: "weekly" });
    assert.deepEqual([reset.credit_limit, reset.limit_reset], ["0.000000001", "weekly"]);
    const cleared = await patch({ credit_limit: null, limit_reset: null });
    assert.deepEqual([cleared.credit_limit, cleared.limit_reset], [null, null]);
    await json(await t.call(key, "POST", "/v1/chat/completions", chat()), 200);

    // rate_limit_rpm set: the second request within the minute is 429; cleared: no limit.
    assert.equal((await patch({ rate_limit_rpm: 1 })).rate_limit_rpm, 1);
    await json(await t.call(key, "POST", "/v1/chat/completions", chat()), 200);
    const limited = await t.call(key, "POST", "/v1/chat/completions", chat());
    assert.ok(Number(limited.headers.get("retry-after")) > 0);
    await expectError(limited, 429, "rate_limited");
    assert.equal((await patch({ rate_limit_rpm: null })).rate_limit_rpm, null);
    await json(await t.call(key, "POST", "/v1/chat/completions", chat()), 200);

    // name; disabled and back.
    assert.equal((await patch({ name: "  renamed  " })).name, "renamed");
    assert.equal((await patch({ disabled: true })).disabled, true);
    await expectError(await t.call(key, "GET", "/v1/key"), 403, "key_disabled");
    assert.equal((await patch({ disabled: false })).disabled, false);
    await json(await t.call(key, "GET", "/v1/key"), 200);
    // An empty PATCH changes nothing.
    const same = await get();
    assert.deepEqual(await patch({}), same);

    // Bad PATCHes are 400 naming the field and change nothing.
    const before = await kvSnapshot(t);
    for (
      const [body, field] of [
        [{ rate_limit_rpm: 1.5 }, "rate_limit_rpm"],
        [{ rate_limit_rpm: 0 }, "rate_limit_rpm"],
        [{ rate_limit_rpm: "5" }, "rate_limit_rpm"],
        [{ disabled: "true" }, "disabled"],
        [{ credit_limit: "-0.1" }, "credit_limit"],
        [{ credit_limit: "0.0000000001" }, "credit_limit"],
        [{ credit_limit: 1e21 }, "credit_limit"],
        [{ limit_reset: "hourly" }, "limit_reset"],
        [{ limit_reset: "daily" }, "limit_reset"],
        [{ name: " " }, "name"],
        [{ spend: "0" }, "body"],
      ] as const
    ) {
      const res = await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, body);
      await expectError(res, 400, "invalid_request", field === "body" ? undefined : `'${field}'`);
    }
    await expectError(
      await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, "{"),
      400,
      "invalid_request",
    );
    assert.deepEqual(await kvSnapshot(t), before, "nothing written");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("keys: a management key disabled or revoked is refused on its next management call", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("1");
    const ops = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "ops", scope: "management" }),
      201,
    );
    assert.equal(ops.scope, "management");
    await json(await t.call(ops.key, "GET", "/v1/credits"), 200);
    await expectError(
      await t.call(ops.key, "POST", "/v1/chat/completions", chat()),
      403,
      "forbidden",
    );
    await json(await t.call(mgmt, "PATCH", `/v1/keys/${ops.id}`, { disabled: true }), 200);
    await expectError(await t.call(ops.key, "GET", "/v1/credits"), 403, "key_disabled");
    await expectError(await t.call(ops.key, "GET", "/v1/keys"), 403, "key_disabled");
    await json(await t.call(mgmt, "DELETE", `/v1/keys/${ops.id}`), 200);
    await expectError(await t.call(ops.key, "GET", "/v1/credits"), 401, "invalid_api_key");
    // Revoking again answers the same; an unknown id is 404, a malformed one 400.
    assert.deepEqual(await json(await t.call(mgmt, "DELETE", `/v1/keys/${ops.id}`), 200), {
      id: ops.id,
      deleted: true,
    });
    await expectError(await t.call(mgmt, "DELETE", `/v1/keys/${newId("key")}`), 404, "not_found");
    await expectError(await t.call(mgmt, "GET", `/v1/keys/${newId("key")}`), 404, "not_found");
    await expectError(await t.call(mgmt, "GET", "/v1/keys/key_nope"), 400, "invalid_request");
  } finally {
    await t.close();
  }
});

Deno.test("admin: without ADMIN_TOKEN (production billing) every admin endpoint is 503", async () => {
  const t = await startRouter({ env: { ADMIN_TOKEN: "", STRIPE_SECRET_KEY: "sk_test_x" } });
  try {
    assert.equal(t.router.svc.config.adminToken, undefined);
    for (
      const [method, path] of [
        ["GET", "/v1/admin/verify"],
        ["GET", "/v1/admin/accounts"],
        ["POST", "/v1/admin/accounts"],
        ["GET", "/v1/admin/accounts/acct_x"],
        ["POST", "/v1/admin/accounts/acct_x/adjustments"],
        ["POST", "/v1/admin/accounts/acct_x/refunds"],
      ]
    ) {
      const body = method === "POST" ? { name: "x", amount: "1", reason: "x" } : undefined;
      await expectError(
        await t.call("anything-at-all-long", method, path, body),
        503,
        "admin_disabled",
      );
      await expectError(await fetch(t.url + path, { method }), 503, "admin_disabled");
    }
    let n = 0;
    for await (const _ of t.kv.list({ prefix: ["account"] })) n++;
    assert.equal(n, 0, "no account was created");
  } finally {
    await t.close();
  }
});

Deno.test("admin amounts: every malformed amount is 400 naming 'amount' and writes nothing", async () => {
  const t = await startRouter();
  try {
    const { id, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    const bad: unknown[] = [
      "",
      " ",
      "1e3",
      "1E-3",
      1e21,
      1e-10,
      "0.0000000001",
      0.1234567891,
      "1.",
      ".5",
      "+1",
      "1,5",
      "0x10",
      "NaN",
      "Infinity",
      "１",
      true,
      null,
      {},
      ["1"],
      "0",
      0,
    ];
    for (const sub of ["adjustments", "refunds"]) {
      for (const amount of bad) {
        const res = await t.admin("POST", `/v1/admin/accounts/${id}/${sub}`, {
          amount,
          reason: "x",
        });
        await expectError(res, 400, "invalid_request", "'amount'");
      }
      const missing = await t.admin("POST", `/v1/admin/accounts/${id}/${sub}`, { reason: "x" });
      await expectError(missing, 400, "invalid_request", "'amount'");
      // Idempotency-Key on a bad body stores nothing: the key stays free.
      const keyed = await t.admin("POST", `/v1/admin/accounts/${id}/${sub}`, {
        amount: "abc",
        reason: "x",
      }, { "idempotency-key": `bad-${sub}` });
      await expectError(keyed, 400, "invalid_request", "'amount'");
    }
    assert.deepEqual(await kvSnapshot(t), before, "nothing written");

    // A JSON number with up to 9 decimals is exact.
    const path = `/v1/admin/accounts/${id}`;
    const num = await json(
      await t.admin("POST", `${path}/adjustments`, `{"amount":0.000001,"reason":"n"}`),
      201,
    );
    assert.equal(num.amount, "0.000001");
    // Below a millionth JavaScript writes the number with an exponent (1e-7): still 7 decimals.
    const tiny = await json(
      await t.admin("POST", `${path}/adjustments`, `{"amount":0.0000001,"reason":"n"}`),
      201,
    );
    assert.equal(tiny.amount, "0.0000001");
    const neg = await json(
      await t.admin("POST", `${path}/adjustments`, { amount: -2.5, reason: "n" }),
      201,
    );
    assert.deepEqual([neg.amount, neg.balance_after], ["-2.5", "-1.4999989"]);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "-1.4999989");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("admin refunds: Idempotency-Key replays without a second ledger row; another body is 409", async () => {
  const t = await startRouter();
  try {
    const { id, mgmt } = await t.account("0");
    const path = `/v1/admin/accounts/${id}/refunds`;
    const body = { amount: "0.25", reason: "billed in error", reference: "req_1" };
    const h = { "idempotency-key": "r1" };
    const first = await json(await t.admin("POST", path, body, h), 201);
    assert.deepEqual(
      Object.keys(first).sort(),
      ["amount", "balance_after", "created_at", "description", "id", "reference", "type"],
    );
    const again = await t.admin("POST", path, body, h);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await json(again, 201), first);
    const before = await kvSnapshot(t);
    const conflict = await t.admin("POST", path, { ...body, amount: "0.26" }, h);
    await expectError(conflict, 409, "idempotency_conflict");
    // The same key for another account is that account's own write.
    const other = await t.account("0");
    await json(await t.admin("POST", `/v1/admin/accounts/${other.id}/refunds`, body, h), 201);
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions"), 200);
    assert.deepEqual(tx.data.map((e: { id: string }) => e.id), [first.id]);
    assert.equal((await json(await t.call(mgmt, "GET", "/v1/credits"), 200)).balance, "0.25");
    const ledgerBefore = [...before.keys()].filter((k) => k.startsWith('["ledger"'));
    const ledgerAfter = [...(await kvSnapshot(t)).keys()].filter((k) =>
      k.startsWith(`["ledger","${id}"`)
    );
    assert.deepEqual(ledgerAfter, ledgerBefore, "the conflict wrote no ledger row");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("ledger and audit: limit defaults to 100, amounts are signed, exports filter on streaming", async () => {
  const t = await startRouter();
  try {
    const { id, key, mgmt } = await t.account("5");
    // 104 requests, one streamed: 105 ledger rows with the grant, 104 audit rows.
    for (let i = 0; i < 104; i++) {
      const body = chat(i === 50 ? { stream: true } : {});
      const res = await t.call(key, "POST", "/v1/chat/completions", body);
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
        amount: "-0.5",
        reason: "taken back",
      }),
      201,
    );
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/refunds`, { amount: "0.25", reason: "r" }),
      201,
    );
    await json(await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" }), 201);
    await t.router.flush();

    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions"), 200);
    assert.equal(tx.data.length, 100, "default limit 100");
    assert.equal(typeof tx.next_cursor, "string");
    const all = await json(await t.call(mgmt, "GET", "/v1/transactions?limit=1000"), 200);
    assert.equal(all.data.length, 108);
    assert.equal(all.next_cursor, null);
    const sign = (type: string) =>
      new Set(
        all.data.filter((e: { type: string }) => e.type === type).map((e: { amount: string }) =>
          parseUsd(e.amount)! > 0n ? "+" : "-"
        ),
      );
    assert.deepEqual(sign("purchase"), new Set(["+"]));
    assert.deepEqual(sign("refund"), new Set(["+"]));
    assert.deepEqual(sign("usage_debit"), new Set(["-"]));
    assert.deepEqual(sign("adjustment"), new Set(["+", "-"]));
    // Σ ledger = balance.
    const sum = all.data.reduce((a: bigint, e: { amount: string }) => a + parseUsd(e.amount)!, 0n);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(sum, parseUsd(credits.balance));
    assert.equal(credits.available, credits.balance);
    assert.equal(
      parseUsd(credits.total_used),
      -all.data.filter((e: { type: string }) => e.type === "usage_debit")
        .reduce((a: bigint, e: { amount: string }) => a + parseUsd(e.amount)!, 0n),
    );
    assert.equal(credits.total_purchased, "10");

    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 100, "default limit 100");
    assert.equal(typeof audit.next_cursor, "string");
    const auditAll = await json(await t.call(mgmt, "GET", "/v1/audit?limit=1000"), 200);
    assert.equal(auditAll.data.length, 104);
    await expectError(
      await t.call(mgmt, "GET", "/v1/audit?limit=1001"),
      400,
      "invalid_request",
      "'limit'",
    );

    // streaming=true|false on the export: CSV and JSON alike.
    const streamed = await json(
      await t.call(mgmt, "GET", "/v1/audit/export?format=json&streaming=true"),
      200,
    );
    assert.ok(Array.isArray(streamed));
    assert.deepEqual(streamed.map((r: { streaming: boolean }) => r.streaming), [true]);
    const plain = await json(
      await t.call(mgmt, "GET", "/v1/audit/export?format=json&streaming=false"),
      200,
    );
    assert.equal(plain.length, 103);
    const csv = await (await t.call(mgmt, "GET", "/v1/audit/export?streaming=true")).text();
    const lines = csv.split("\r\n");
    assert.equal(lines.length, 3, "header, one row, and the final CRLF");
    assert.equal(lines[1].split(",")[15], "true");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("billing: packages and a development checkout; bad checkouts are clear and write nothing", async () => {
  const t = await startRouter();
  try {
    const { mgmt, key } = await t.account("0");
    const packages = await json(await t.call(mgmt, "GET", "/v1/billing/packages"), 200);
    for (const p of packages.data) {
      assert.deepEqual(Object.keys(p).sort(), ["credits", "currency", "id", "name", "price"]);
      assert.notEqual(parseUsd(p.price), null);
      assert.notEqual(parseUsd(p.credits), null);
    }
    const before = await kvSnapshot(t);
    await expectError(
      await t.call(mgmt, "POST", "/v1/billing/checkout", {}),
      400,
      "invalid_request",
      "'package_id'",
    );
    await expectError(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: 5 }),
      400,
      "invalid_request",
      "'package_id'",
    );
    await expectError(
      await t.call(mgmt, "POST", "/v1/billing/checkout", "not json"),
      400,
      "invalid_request",
    );
    await expectError(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "nope" }),
      404,
      "not_found",
    );
    await expectError(
      await t.call(key, "POST", "/v1/billing/checkout", { package_id: "starter" }),
      403,
      "forbidden",
    );
    await expectError(await t.call(key, "GET", "/v1/billing/packages"), 403, "forbidden");
    assert.deepEqual(await kvSnapshot(t), before, "nothing written");
    const r = await json(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "scale" }),
      201,
    );
    const scale = packages.data.find((p: { id: string }) => p.id === "scale");
    assert.equal(r.transaction.amount, scale.credits);
    assert.equal(r.transaction.balance_after, scale.credits);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
