// The management and admin API against API.md's contract, point by point, where no other test
// proves it: cursors, periods, the key object, limits, amounts, ADMIN_TOKEN unset.
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../_helpers.ts";

type Snapshot = Map<string, string>;
const ser = (v: unknown) => JSON.stringify(v, (_k, x) => typeof x === "bigint" ? `${x}n` : x);

/** Every KV entry, after all pending work is recorded. */
async function snapshot(t: TestRouter): Promise<Snapshot> {
  await t.router.flush();
  const out: Snapshot = new Map();
  for await (const e of t.kv.list({ prefix: [] })) out.set(ser(e.key), ser(e.value));
  return out;
}

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
    const before = await snapshot(t);
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
    assert.deepEqual(await snapshot(t), before, "nothing written");
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
    import { parseTime } from "./lib/http/params.ts";
    import { usageParams } from "./lib/usage/params.ts";
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
    const before = await snapshot(t);
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
    assert.deepEqual(await snapshot(t), before, "nothing written");
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
