import assert from "node:assert/strict";
import {
  type AuditFilter,
  getAuditAttempts,
  listAuditByAccount,
} from "../../../lib/audit/query.ts";
import { auditRowOf, recordEvents } from "../../../lib/audit/recorder.ts";
import { auditIdKey, auditKey, outboxKey } from "../../../lib/kv/schema.ts";
import { usageEvent } from "../../_fixtures.ts";
import { encodeAuditRow } from "../../../lib/audit/row.ts";

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

Deno.test("getAuditAttempts: a request's attempt rows in attempt order, and no other request's", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const at = (i: number) => BASE + i * 1000;
    const events = [
      // Twelve failed attempts ("req_x.10" sorts before "req_x.2" in the index), then the reply.
      ...Array.from({ length: 12 }, (_, i) =>
        usageEvent({
          account_id: ACCT,
          ts: at(i),
          request_id: `req_x.${i + 1}`,
          status: 502,
          cost: 0n,
          error_code: "upstream_error",
        })),
      usageEvent({ account_id: ACCT, ts: at(12), request_id: "req_x" }),
      // Neighbours in the index that are not attempts of req_x.
      ...["req_x2", "req_x2.1", "req_xy", "req_x.1.2", "req_x."].map((request_id, i) =>
        usageEvent({ account_id: ACCT, ts: at(20 + i), request_id })
      ),
      usageEvent({ account_id: "acct_other", ts: at(30), request_id: "req_x.13" }),
    ];
    for (const e of events) await kv.set(outboxKey(e.id), e);
    assert.equal(await recordEvents(kv, events.map((e) => e.id)), events.length);

    const attempts = await getAuditAttempts(kv, ACCT, "req_x");
    assert.deepEqual(
      attempts.map((r) => r.request_id),
      Array.from({ length: 12 }, (_, i) => `req_x.${i + 1}`),
    );
    assert.deepEqual(attempts[0], auditRowOf(events[0]));
    assert.deepEqual(await getAuditAttempts(kv, ACCT, "req_x2"), [auditRowOf(events[14])]);
    assert.deepEqual(await getAuditAttempts(kv, ACCT, "req_xy"), []);
    assert.deepEqual(await getAuditAttempts(kv, ACCT, "req_missing"), []);
  } finally {
    kv.close();
  }
});
