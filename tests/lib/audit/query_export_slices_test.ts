import assert from "node:assert/strict";
import { auditBytesOf } from "../../../lib/audit/recorder.ts";
import { exportAudit } from "../../../lib/audit/query.ts";
import { decodeAuditRow } from "../../../lib/audit/row.ts";
import { auditKey } from "../../../lib/kv/schema.ts";
import type { UsageEvent } from "../../../lib/billing/types.ts";
import { usageEvent } from "../../_fixtures.ts";

const T0 = Date.UTC(2026, 0, 1);
const base: UsageEvent = usageEvent({ id: "", account_id: "acct_s", ts: 0, request_id: "" });

Deno.test("export reads the period in time slices yet yields every row once, newest first", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // Shapes that move the slice width both ways: 2,500 rows in one millisecond (a slice that
    // cannot narrow), a dense burst, rows days apart, a long gap, and another tenant's rows.
    const times: number[] = [];
    for (let i = 0; i < 2500; i++) times.push(T0 + 5 * 86_400_000);
    for (let i = 0; i < 3000; i++) times.push(T0 + 86_400_000 + i * 7);
    for (let i = 0; i < 40; i++) times.push(T0 + i * 3_600_000 * 13);
    for (let i = 0; i < 500; i++) times.push(T0 + 40 * 86_400_000 + i * 61_000);
    let atomic = kv.atomic();
    let n = 0;
    const put = async (account: string, ts: number, i: number) => {
      const e = {
        ...base,
        account_id: account,
        ts,
        request_id: `req_${String(i).padStart(6, "0")}`,
        key_id: i % 3 === 0 ? "key_b" : "key_a",
      };
      atomic.set(auditKey(account, ts, e.request_id), auditBytesOf(e));
      if (++n % 500 === 0) {
        await atomic.commit();
        atomic = kv.atomic();
      }
    };
    for (const [i, ts] of times.entries()) await put("acct_s", ts, i);
    for (let i = 0; i < 300; i++) await put("acct_t", T0 + 86_400_000 + i, 900_000 + i);
    await atomic.commit();

    const expected = async (from: number, to: number, key?: string) => {
      const out: string[] = [];
      const iter = kv.list<Uint8Array>({
        start: ["audit", "acct_s", from],
        end: ["audit", "acct_s", to],
      }, { reverse: true });
      for await (const { value } of iter) {
        const row = decodeAuditRow(value);
        if (!key || row.key_id === key) out.push(row.request_id);
      }
      return out;
    };
    const exported = async (from: number, to: number, key?: string) => {
      const text = await new Response(
        exportAudit(kv, "acct_s", { fromMs: from, toMs: to, key_id: key }, "json"),
      ).text();
      return (JSON.parse(text) as { request_id: string }[]).map((r) => r.request_id);
    };
    const all = await exported(0, Number.MAX_SAFE_INTEGER);
    assert.equal(all.length, times.length);
    assert.deepEqual(all, await expected(0, Number.MAX_SAFE_INTEGER));
    assert.deepEqual(
      await exported(0, Number.MAX_SAFE_INTEGER, "key_b"),
      await expected(0, Number.MAX_SAFE_INTEGER, "key_b"),
    );
    // Bounds inside the data, one of them on the crowded millisecond.
    const from = T0 + 86_400_000 + 700, to = T0 + 5 * 86_400_000 + 1;
    assert.deepEqual(await exported(from, to), await expected(from, to));
    assert.deepEqual(await exported(from, T0 + 5 * 86_400_000), await expected(from, to - 1));
    assert.equal(
      await new Response(exportAudit(kv, "acct_s", { fromMs: 0, toMs: 1 }, "json")).text(),
      "[]",
    );
    const csv = await new Response(exportAudit(kv, "acct_s", { fromMs: 0, toMs: 1 }, "csv")).text();
    assert.equal(csv.split("\r\n").length, 2);
  } finally {
    kv.close();
  }
});
