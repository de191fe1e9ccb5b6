/**
 * What a request names reaches KV only in a shape the router gives out: ids of `newId`'s shape,
 * emails of at most 254 characters, cursors of real rows, URLs that decode. Anything else is a
 * 4xx, never the 500 of a key KV refuses (over 2 KiB) or of a decoding error.
 */
import assert from "node:assert/strict";
import { newId } from "../../../lib/ids.ts";
import { adminSession, json, kvSnapshot, startRouter, userSession } from "../../_helpers.ts";
import { SIGNIN_LIMIT } from "../../../lib/auth/sessions.ts";

/** Longer than KV's 2 KiB key limit once it is part of a key. */
const HUGE = "x".repeat(2100);

async function expectError(res: Response, status: number, code: string, field?: string) {
  const body = await json(res, status);
  assert.equal(body.error.code, code);
  if (field) assert.match(body.error.message, new RegExp(`'${field}'`));
}

/** `fetch` that reads the body and answers the status, for pages. */
async function status(res: Promise<Response>): Promise<number> {
  const r = await res;
  await r.body?.cancel();
  return r.status;
}

Deno.test("a path or query id of another shape is 400 naming it, a well-formed unknown one 404", async () => {
  const t = await startRouter();
  try {
    const { mgmt, id: accountId } = await t.account("1");
    const before = await kvSnapshot(t);
    for (const bad of [HUGE, `key_${HUGE}`, "key_nope", "key_" + "0".repeat(25), "KEY_x"]) {
      const id = encodeURIComponent(bad);
      await expectError(await t.call(mgmt, "GET", `/v1/keys/${id}`), 400, "invalid_request", "id");
      await expectError(
        await t.call(mgmt, "PATCH", `/v1/keys/${id}`, { name: "x" }),
        400,
        "invalid_request",
        "id",
      );
      await expectError(await t.call(mgmt, "DELETE", `/v1/keys/${id}`), 400, "invalid_request");
      await expectError(await t.call(mgmt, "GET", `/v1/keys/${id}/usage`), 400, "invalid_request");
      await expectError(
        await t.call(mgmt, "GET", `/v1/audit?key_id=${id}`),
        400,
        "invalid_request",
        "key_id",
      );
      await expectError(
        await t.call(mgmt, "GET", `/v1/audit/export?key_id=${id}`),
        400,
        "invalid_request",
        "key_id",
      );
      await expectError(
        await t.call(mgmt, "GET", `/v1/audit/${id}`),
        400,
        "invalid_request",
        "request_id",
      );
      await expectError(
        await t.admin("GET", `/v1/admin/accounts/${id}`),
        400,
        "invalid_request",
        "id",
      );
      for (const sub of ["adjustments", "refunds"]) {
        await expectError(
          await t.admin("POST", `/v1/admin/accounts/${id}/${sub}`, { amount: "1", reason: "x" }),
          400,
          "invalid_request",
          "id",
        );
      }
    }
    // Well-formed ids of nothing, and a request id's attempt suffix: 404.
    const key = newId("key");
    await expectError(await t.call(mgmt, "GET", `/v1/keys/${key}`), 404, "not_found");
    await expectError(await t.call(mgmt, "DELETE", `/v1/keys/${key}`), 404, "not_found");
    await expectError(await t.call(mgmt, "GET", `/v1/audit/${newId("req")}`), 404, "not_found");
    await expectError(await t.call(mgmt, "GET", `/v1/audit/${newId("req")}.2`), 404, "not_found");
    await expectError(
      await t.call(mgmt, "GET", `/v1/audit/${newId("req")}.x`),
      400,
      "invalid_request",
    );
    await expectError(
      await t.admin("GET", `/v1/admin/accounts/${newId("acct")}`),
      404,
      "not_found",
    );
    // An account id is no key id.
    await expectError(await t.call(mgmt, "GET", `/v1/keys/${accountId}`), 400, "invalid_request");
    assert.deepEqual(await kvSnapshot(t), before, "nothing was written");
  } finally {
    await t.close();
  }
});

Deno.test("pages refuse ids of another shape before KV: 400 pages, never 500", async () => {
  const t = await startRouter();
  try {
    const admin = await adminSession(t);
    const user = await userSession(t, "ids@example.com");
    const before = await kvSnapshot(t);
    const page = (path: string, headers: Record<string, string>, form?: Record<string, string>) =>
      status(fetch(t.url + path, {
        method: form ? "POST" : "GET",
        redirect: "manual",
        headers,
        body: form ? new URLSearchParams(form) : undefined,
      }));
    assert.equal(await page(`/dashboard/admin/accounts/${HUGE}`, admin.headers()), 400);
    assert.equal(
      await page(`/dashboard/admin/accounts/${HUGE}`, admin.headers(), {
        _csrf: admin.csrf,
        type: "adjustment",
        amount: "1",
        reason: "x",
      }),
      400,
    );
    assert.equal(await page(`/dashboard/admin/accounts/${newId("acct")}`, admin.headers()), 404);
    assert.equal(
      await page("/dashboard/settings/members", user.headers(), { _csrf: user.csrf, remove: HUGE }),
      400,
    );
    // Switching to an account of another shape changes nothing and goes back to the dashboard.
    assert.equal(
      await page("/dashboard/switch", user.headers(), { _csrf: user.csrf, account_id: HUGE }),
      303,
    );
    assert.deepEqual(await kvSnapshot(t), before, "nothing was written");
  } finally {
    await t.close();
  }
});

Deno.test("an email over 254 characters is refused before any KV read, on every form and API", async () => {
  const t = await startRouter();
  try {
    const user = await userSession(t, "owner@example.com");
    const long = "a".repeat(64) + "@" + "b".repeat(190) + ".example"; // 263 characters
    const huge = HUGE + "@example.com";
    const before = await kvSnapshot(t);
    const form = (path: string, fields: Record<string, string>, headers = { origin: t.url }) =>
      fetch(t.url + path, {
        method: "POST",
        redirect: "manual",
        headers,
        body: new URLSearchParams(fields),
      });
    for (const email of [long, huge]) {
      // Sign-in answers at once: not even the attempt is counted, so no address is locked out.
      for (let i = 0; i <= SIGNIN_LIMIT; i++) {
        assert.equal(await status(form("/signin", { email, password: "whatever-123" })), 400);
      }
      assert.equal(
        await status(form("/signup", {
          email,
          name: "N",
          account: "A",
          password: "long-enough-password",
        })),
        400,
      );
      assert.equal(
        await status(
          form("/dashboard/settings/members", { _csrf: user.csrf, email }, user.headers()),
        ),
        400,
      );
      await expectError(
        await t.admin("POST", "/v1/admin/accounts", { name: "x", email }),
        400,
        "invalid_request",
        "email",
      );
    }
    // The attempt counters of sign-up are the only writes.
    const after = await kvSnapshot(t);
    const added = [...after.keys()].filter((k) => !before.has(k));
    assert.ok(added.every((k) => k.startsWith('["signin_attempts"')), added.join("\n"));
  } finally {
    await t.close();
  }
});

Deno.test("a percent-escape that does not decode is 400 on every path: API JSON, pages, static", async () => {
  const t = await startRouter();
  try {
    const { mgmt, key } = await t.account("1");
    const before = await kvSnapshot(t);
    for (const path of ["/v1/keys/%ff", "/v1/audit?model=%ff", "/v1/credits?x=%e2%82", "/v1"]) {
      const res = await t.call(mgmt, "GET", path === "/v1" ? "/v1?%c0" : path);
      await expectError(res, 400, "invalid_request");
    }
    await expectError(
      await t.call(key, "POST", "/v1/chat/completions?%ff", { model: "gpt-4o-mini" }),
      400,
      "invalid_request",
    );
    for (
      const path of ["/static/%ff", "/static/app.css%c0", "/dashboard?from=%ff", "/signin?next=%e2"]
    ) {
      const res = await fetch(t.url + path, { redirect: "manual" });
      assert.equal(res.status, 400, path);
      assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
      await res.body?.cancel();
    }
    // Escapes that decode are read as before.
    assert.equal(await status(fetch(`${t.url}/static/app%2Ecss`)), 200);
    await json(await fetch(`${t.url}/v1/models/openai%2Fgpt-4o-mini`), 200);
    await json(await t.call(mgmt, "GET", "/v1/audit?model=gpt%2D4o"), 200);
    assert.deepEqual(await kvSnapshot(t), before, "nothing was written");
  } finally {
    await t.close();
  }
});

/** A cursor as the audit trail writes one: its (time, request id), base64url JSON. */
const auditCursor = (v: unknown) =>
  btoa(JSON.stringify(v)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");

Deno.test("a cursor that names no row (a negative or far time, an odd id) is 400", async () => {
  const t = await startRouter();
  try {
    const { mgmt, key } = await t.account("1");
    for (let i = 0; i < 3; i++) {
      await json(
        await t.call(key, "POST", "/v1/chat/completions", {
          model: "gpt-4o-mini",
          messages: [{ role: "user", content: "hi" }],
        }),
        200,
      );
    }
    await t.router.flush();
    const first = await json(await t.call(mgmt, "GET", "/v1/audit?limit=1"), 200);
    assert.ok(first.next_cursor);
    await json(await t.call(mgmt, "GET", `/v1/audit?limit=1&cursor=${first.next_cursor}`), 200);
    const req = newId("req");
    for (
      const bad of [
        [-1, req],
        [-1e15, req],
        [8.64e15 + 1, req],
        [Number.MAX_SAFE_INTEGER, req],
        [1.5, req],
        [1, ""],
        [1, "r".repeat(65)],
        [1, "\u00ff".repeat(60)],
        [1, 7],
        ["1", req],
        [],
        {},
      ]
    ) {
      for (const path of ["/v1/audit", "/v1/audit?from=2026-01-01"]) {
        const sep = path.includes("?") ? "&" : "?";
        await expectError(
          await t.call(mgmt, "GET", `${path}${sep}cursor=${auditCursor(bad)}`),
          400,
          "invalid_request",
          "cursor",
        );
      }
    }
    // A cursor below the period's start is an empty last page.
    const old = await json(
      await t.call(mgmt, "GET", `/v1/audit?from=2026-01-01&cursor=${auditCursor([0, req])}`),
      200,
    );
    assert.deepEqual(old, { data: [], next_cursor: null });

    // The ledger's cursor (Deno KV's own): one cut short or edited is 400 too.
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?limit=1"), 200);
    assert.ok(tx.next_cursor);
    for (
      const bad of [tx.next_cursor.slice(0, 5), "AA", "_w", "-".repeat(2000), "x".repeat(2001)]
    ) {
      await expectError(
        await t.call(mgmt, "GET", `/v1/transactions?cursor=${bad}`),
        400,
        "invalid_request",
        "cursor",
      );
    }
    // The dashboard's pages fall back to the first page.
    const user = await userSession(t, "cursor@example.com");
    for (const path of ["/dashboard/audit", "/dashboard/settings/billing"]) {
      const res = await fetch(`${t.url}${path}?cursor=${auditCursor([-1, req])}`, {
        headers: user.headers(),
      });
      assert.equal(res.status, 200, path);
      await res.body?.cancel();
    }
  } finally {
    await t.close();
  }
});
