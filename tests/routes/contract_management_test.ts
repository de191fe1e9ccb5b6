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
