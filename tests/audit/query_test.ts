import assert from "node:assert/strict";
import { type AuditFilter, listAuditByAccount } from "../../lib/audit/query.ts";
import { auditIdKey, auditKey } from "../../lib/kv/schema.ts";
import { encodeAuditRow } from "../../lib/audit/row.ts";

const ACCT = "acct_q";
const BASE = Date.UTC(2026, 10, 1);

/** `n` rows a second apart; every `every`-th one is model "rare". */
async function seed(kv: Deno.Kv, n: number, every: number) {
  for (let i = 0; i < n; i += 200) {
    const a = kv.atomic();
    for (let j = i; j < Math.min(n, i + 200); j++) {
      const ms = BASE + j * 1000, id = `req_${String(j).padStart(5, "0")}`;
      const row = {
        timestamp: new Date(ms).toISOString(),
        request_id: id,
        key_id: "key_1",
        key_name: "k",
        provider: "openai",
        model: j % every === 0 ? "rare" : "common",
        prompt_tokens: 1,
        completion_tokens: 1,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost: 1n,
        market_cost: 2n,
        latency_ms: 1,
        status: 200,
        streaming: false,
        client_ip: "",
        user_agent: "",
        error_code: null,
      };
      a.set(auditKey(ACCT, ms, id), encodeAuditRow(row)).set(auditIdKey(ACCT, id), ms);
    }
    await a.commit();
  }
}

async function allPages(kv: Deno.Kv, f: AuditFilter, limit: number) {
  const ids: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const page = await listAuditByAccount(kv, ACCT, f, limit, cursor);
    ids.push(...page.data.map((r) => r.request_id));
    cursor = page.next_cursor ?? undefined;
    pages++;
  } while (cursor);
  return { ids, pages };
}

Deno.test("listAuditByAccount: pages read past their first batch when a filter skips rows", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    await seed(kv, 2500, 7);
    const all = { fromMs: 0, toMs: Number.MAX_SAFE_INTEGER };
    const expected = Array.from({ length: 2500 }, (_, j) => `req_${String(j).padStart(5, "0")}`)
      .reverse();
    const plain = await allPages(kv, all, 50);
    assert.deepEqual(plain.ids, expected);
    assert.equal(plain.pages, 50);
    // One row in seven matches: each page of 10 reads well past its first 11 rows.
    const rare = await allPages(kv, { ...all, model: "rare" }, 10);
    assert.deepEqual(rare.ids, expected.filter((id) => Number(id.slice(4)) % 7 === 0));
    const common = await allPages(kv, { ...all, model: "common" }, 1000);
    assert.deepEqual(common.ids, expected.filter((id) => Number(id.slice(4)) % 7 !== 0));
  } finally {
    kv.close();
  }
});
