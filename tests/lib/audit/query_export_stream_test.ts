import assert from "node:assert/strict";
import { startRouter } from "../../_helpers.ts";
import { exportAudit } from "../../../lib/audit/query.ts";
import { auditBytesOf } from "../../../lib/audit/recorder.ts";
import { auditKey } from "../../../lib/kv/schema.ts";
import { usageEvent } from "../../_fixtures.ts";
import { parseCsv } from "../../_csv.ts";

const T0 = Date.parse("2032-04-01T00:00:00Z");

/** `n` audit rows of an account, 10 ms apart from T0. */
async function seed(kv: Deno.Kv, accountId: string, n: number) {
  let atomic = kv.atomic();
  for (let i = 0; i < n; i++) {
    const e = usageEvent({ account_id: accountId, ts: T0 + i * 10, request_id: `req_${i}` });
    atomic.set(auditKey(accountId, e.ts, e.request_id), auditBytesOf(e));
    if (i % 500 === 499) {
      await atomic.commit();
      atomic = kv.atomic();
    }
  }
  await atomic.commit();
}

/** A KV that counts the audit rows its range reads hand out. */
function countingKv(kv: Deno.Kv) {
  const counter = { rows: 0 };
  const wrapped = new Proxy(kv, {
    get(target, prop) {
      if (prop === "list") {
        return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
          const it = target.list(selector, options);
          return (async function* () {
            for await (const e of it) {
              if (e.key[0] === "audit") counter.rows++;
              yield e;
            }
          })();
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { kv: wrapped, counter };
}

Deno.test("the export reads rows only as the client reads: a paused reader holds a few pages", async () => {
  const base = await Deno.openKv(":memory:");
  try {
    await seed(base, "acct_s", 20_000);
    const { kv, counter } = countingKv(base);
    for (const format of ["csv", "json"] as const) {
      counter.rows = 0;
      const reader = exportAudit(kv, "acct_s", { fromMs: 0, toMs: Number.MAX_SAFE_INTEGER }, format)
        .getReader();
      await reader.read();
      await reader.read();
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(counter.rows <= 4_002, `${format}: ${counter.rows} rows read for two chunks`);
      await reader.cancel();
      await new Promise((r) => setTimeout(r, 50));
      const after = counter.rows;
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(counter.rows, after, `${format}: nothing is read after a cancel`);
    }
  } finally {
    base.close();
  }
});

Deno.test("an export the client abandons mid-way leaves no error and no open resource", async () => {
  const logged: unknown[] = [];
  const t = await startRouter({
    now: () => T0 + 86_400_000,
    log: (level, msg, fields) => {
      if (level !== "info") logged.push({ level, msg, fields });
    },
  });
  try {
    const { id, mgmt } = await t.account("1");
    await seed(t.kv, id, 30_000);
    for (const format of ["csv", "json"]) {
      const ac = new AbortController();
      const res = await fetch(`${t.url}/v1/audit/export?format=${format}`, {
        headers: { authorization: `Bearer ${mgmt}` },
        signal: ac.signal,
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      assert.ok((await reader.read()).value!.length > 0);
      ac.abort();
      await reader.cancel().catch(() => {});
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(logged, []);
    // The router still answers exports in full.
    const all = await t.call(
      mgmt,
      "GET",
      "/v1/audit/export?from=2032-04-01T00:00:00Z&to=2032-04-01T00:00:00.010Z",
    );
    assert.equal(parseCsv(await all.text()).length, 2);
  } finally {
    await t.close();
  }
});
