import assert from "node:assert/strict";
import { json, padding, startRouter, type TestRouter } from "../../_helpers.ts";
import { exportAudit, pruneAudit } from "../../../lib/audit/query.ts";
import { auditBytesOf } from "../../../lib/audit/recorder.ts";
import { AUDIT_COLUMNS } from "../../../lib/audit/row.ts";
import { auditIdKey, auditKey, outboxKey } from "../../../lib/kv/schema.ts";
import type { UsageEvent } from "../../../lib/billing/types.ts";
import { newId } from "../../../lib/ids.ts";
import { usageEvent } from "../../_fixtures.ts";
import { parseCsv } from "../../_csv.ts";

// Test clocks run ahead of the real one (see tests/lib/billing/periods_limits_test.ts).
const T0 = Date.parse("2031-05-01T09:00:00Z");
const USAGE = { prompt_tokens: 100, completion_tokens: 20 };

async function chat(t: TestRouter, key: string, headers: Record<string, string> = {}) {
  const res = await t.call(key, "POST", "/v1/chat/completions", {
    model: "openai/gpt-4o-mini",
    ...padding(200),
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 50,
  }, headers);
  await res.body?.cancel();
  return res.headers.get("x-request-id")!;
}

async function allPages(t: TestRouter, auth: string, query: string, between?: () => Promise<void>) {
  const ids: string[] = [];
  let cursor: string | null = null;
  do {
    const page: { data: { request_id: string }[]; next_cursor: string | null } = await json(
      await t.call(auth, "GET", `/v1/audit?${query}${cursor ? `&cursor=${cursor}` : ""}`),
      200,
    );
    ids.push(...page.data.map((r) => r.request_id));
    cursor = page.next_cursor;
    await between?.();
  } while (cursor);
  return ids;
}

Deno.test("audit: filters, one row by request id, other tenants' rows invisible", async () => {
  let clock = T0;
  const t = await startRouter({ now: () => clock });
  try {
    const { key, keyId, mgmt } = await t.account("1");
    const stranger = await t.account("1");
    t.openai.scenario = { usage: USAGE };
    const ok1 = await chat(t, key);
    clock += 1000;
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      ...padding(200),
      messages: [{ role: "user", content: "stream" }],
      stream: true,
    });
    await res.text();
    const streamed = res.headers.get("x-request-id")!;
    clock += 1000;
    t.openai.scenario = { status: 500 };
    const failed = await chat(t, key);
    await t.router.flush();

    const row = await json(await t.call(mgmt, "GET", `/v1/audit/${ok1}`), 200);
    assert.equal(row.request_id, ok1);
    assert.equal(row.key_id, keyId);
    assert.equal(row.status, 200);
    assert.equal(row.cost, "0.0000216");
    assert.equal(row.timestamp, new Date(T0).toISOString());
    await json(await t.call(mgmt, "GET", `/v1/audit/${newId("req")}`), 404);
    await json(await t.call(mgmt, "GET", "/v1/audit/req_unknown"), 400);
    await json(await t.call(stranger.mgmt, "GET", `/v1/audit/${ok1}`), 404);

    const ids = async (q: string) =>
      (await json(await t.call(mgmt, "GET", `/v1/audit?${q}`), 200)).data.map((
        r: { request_id: string },
      ) => r.request_id);
    // Retried attempts of the failed request have rows of their own ("<id>.<n>").
    const attempts = (l: string[]) => l.filter((id) => !id.startsWith(failed + "."));
    assert.deepEqual(attempts(await ids("")), [failed, streamed, ok1], "newest first");
    const failedRow = await json(await t.call(mgmt, "GET", `/v1/audit/${failed}`), 200);
    assert.ok(failedRow.status >= 500);
    assert.equal(failedRow.cost, "0");
    assert.deepEqual(await ids("streaming=true"), [streamed]);
    assert.deepEqual(await ids("status=200&streaming=false"), [ok1]);
    assert.deepEqual(attempts(await ids(`key_id=${keyId}&model=gpt-4o-mini&provider=openai`)), [
      failed,
      streamed,
      ok1,
    ]);
    assert.deepEqual(await ids("model=gpt-4o"), []);
    const from = new Date(T0 + 1000).toISOString(), to = new Date(T0 + 2000).toISOString();
    assert.deepEqual(await ids(`from=${from}&to=${to}`), [streamed], "[from, to)");
    assert.deepEqual(attempts(await ids(`from=${from}`)), [failed, streamed]);
    assert.deepEqual(await json(await t.call(stranger.mgmt, "GET", "/v1/audit"), 200), {
      data: [],
      next_cursor: null,
    });
    for (const q of ["status=abc", "streaming=yes", "limit=0", "cursor=!!", "cursor=abc"]) {
      const body = await json(await t.call(mgmt, "GET", `/v1/audit?${q}`), 400);
      assert.equal(body.error.code, "invalid_request");
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("audit paging never skips or repeats a row while new requests arrive", async () => {
  let clock = T0 + 86_400_000;
  const t = await startRouter({ now: () => clock });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: USAGE };
    const before: string[] = [];
    // Several rows share a millisecond: the cursor must tell them apart.
    for (let i = 0; i < 11; i++) {
      if (i % 3 === 0) clock += 1;
      before.push(await chat(t, key));
    }
    await t.router.flush();
    const newer: string[] = [];
    const seen = await allPages(t, mgmt, "limit=2", async () => {
      clock += 1;
      newer.push(await chat(t, key));
      await t.router.flush();
    });
    assert.equal(new Set(seen).size, seen.length, "no row twice");
    assert.deepEqual(new Set(seen), new Set(before), "every row present at the start, no other");
    // The same again with a filter that skips most rows.
    const filtered = await allPages(t, mgmt, "limit=1&status=200");
    assert.equal(filtered.length, before.length + newer.length);
    assert.equal(new Set(filtered).size, filtered.length);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("audit export: exactly the period's rows, CSV escaped, JSON alike", async () => {
  let clock = T0 + 2 * 86_400_000;
  const t = await startRouter({ now: () => clock });
  try {
    const { id: accountId, mgmt } = await t.account("1");
    const named = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: 'Ops, "Team" A\nZürich 🚀' }),
      201,
    );
    t.openai.scenario = { usage: USAGE };
    const times = [0, 3_599_999, 3_600_000, 7_199_999, 7_200_000].map((d) => clock + d);
    const ids: string[] = [];
    for (const at of times) {
      clock = at;
      ids.push(await chat(t, named.key, { "user-agent": 'Bot/1.0 (x, "y")' }));
    }
    // A row whose user agent holds non-ASCII and a line break, recorded like any other.
    const odd: UsageEvent = {
      id: newId("evt", times[2] + 1),
      account_id: accountId,
      ts: times[2] + 1,
      request_id: "req_odd",
      key_id: named.id,
      key_name: named.name,
      provider: "openai",
      model: "gpt-4o-mini",
      prompt_tokens: 0,
      completion_tokens: 0,
      cached_tokens: 0,
      cache_write_tokens: 0,
      reasoning_tokens: 0,
      cost: 0n,
      market_cost: 0n,
      latency_ms: 1,
      status: 400,
      streaming: false,
      client_ip: "::1",
      user_agent: 'Zoë/2 "naïve",\r\nnext',
      billed: false,
      balance_after: null,
      error_code: "invalid_request",
    };
    await t.kv.set(outboxKey(odd.id), odd);
    await t.router.flush();

    const from = new Date(times[1]).toISOString(), to = new Date(times[4]).toISOString();
    const res = await t.call(mgmt, "GET", `/v1/audit/export?format=csv&from=${from}&to=${to}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^text\/csv/);
    const bytes = new Uint8Array(await res.arrayBuffer());
    assert.notDeepEqual([...bytes.slice(0, 3)], [0xef, 0xbb, 0xbf], "no BOM");
    const rows = parseCsv(new TextDecoder().decode(bytes));
    assert.deepEqual(rows[0], [...AUDIT_COLUMNS]);
    const body = rows.slice(1).map((r) =>
      Object.fromEntries(AUDIT_COLUMNS.map((c, i) => [c, r[i]]))
    );
    assert.deepEqual(body.map((r) => r.request_id), [ids[3], "req_odd", ids[2], ids[1]]);
    for (const r of body) {
      assert.equal(r.key_name, 'Ops, "Team" A\nZürich 🚀');
      assert.equal(r.key_id, named.id);
      assert.ok(Date.parse(r.timestamp) >= times[1] && Date.parse(r.timestamp) < times[4]);
    }
    assert.equal(body[1].user_agent, 'Zoë/2 "naïve",\r\nnext');
    assert.equal(body[0].user_agent, 'Bot/1.0 (x, "y")');
    assert.equal(body[0].streaming, "false");
    assert.equal(body[0].cost, "0.0000216");

    const j = await json(
      await t.call(mgmt, "GET", `/v1/audit/export?format=json&from=${from}&to=${to}`),
      200,
    );
    assert.deepEqual(
      j.map((r: { request_id: string }) => r.request_id),
      body.map((r) => r.request_id),
    );
    assert.equal(j[1].user_agent, odd.user_agent);
    const filtered = await (await t.call(mgmt, "GET", `/v1/audit/export?status=400`)).text();
    assert.equal(parseCsv(filtered).length, 2);
    const bad = await json(await t.call(mgmt, "GET", "/v1/audit/export?format=xml"), 400);
    assert.match(bad.error.message, /'format'/);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("audit retention deletes old rows and their index, never the ledger", async () => {
  let clock = T0 + 3 * 86_400_000;
  const t = await startRouter({ now: () => clock });
  try {
    const { id: accountId, key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: USAGE };
    const old = await chat(t, key);
    clock += 40 * 86_400_000;
    const recent = await chat(t, key);
    await t.router.flush();
    const gone = await pruneAudit(t.kv, clock - 30 * 86_400_000);
    assert.equal(gone, 1);
    await json(await t.call(mgmt, "GET", `/v1/audit/${old}`), 404);
    assert.equal((await t.kv.get(auditIdKey(accountId, old))).value, null);
    await json(await t.call(mgmt, "GET", `/v1/audit/${recent}`), 200);
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.equal(tx.data.length, 2, "the ledger keeps both debits");
    const u = await json(await t.call(mgmt, "GET", "/v1/usage?from=2031-01-01&to=2031-12-31"), 200);
    assert.equal(u.summary.requests, 2, "usage rollups are kept");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("audit export streams many pages in order, filters skipping whole pages", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const base: UsageEvent = usageEvent({ id: "", account_id: "acct_x", ts: 0, request_id: "" });
    // 2,500 rows; only the first 100 and the last 100 are key_b's (whole pages between match none).
    let atomic = kv.atomic();
    for (let i = 0; i < 2500; i++) {
      const e = {
        ...base,
        ts: T0 + i,
        request_id: `req_${String(i).padStart(5, "0")}`,
        key_id: i < 100 || i >= 2400 ? "key_b" : "key_a",
      };
      atomic.set(auditKey("acct_x", e.ts, e.request_id), auditBytesOf(e));
      if (i % 500 === 499) {
        await atomic.commit();
        atomic = kv.atomic();
      }
    }
    const read = async (s: ReadableStream<Uint8Array>) => await new Response(s).text();
    const all = { fromMs: 0, toMs: Number.MAX_SAFE_INTEGER };
    const csv = parseCsv(await read(exportAudit(kv, "acct_x", all, "csv")));
    assert.equal(csv.length, 2501);
    assert.equal(csv[1][1], "req_02499");
    assert.equal(csv[2500][1], "req_00000");
    const b = JSON.parse(
      await read(exportAudit(kv, "acct_x", { ...all, key_id: "key_b" }, "json")),
    );
    assert.equal(b.length, 200);
    assert.equal(b[99].request_id, "req_02400");
    assert.equal(b[100].request_id, "req_00099");
    const none = await read(exportAudit(kv, "acct_x", { ...all, key_id: "key_c" }, "json"));
    assert.equal(none, "[]");
    const period = parseCsv(
      await read(exportAudit(kv, "acct_x", { fromMs: T0 + 1000, toMs: T0 + 2000 }, "csv")),
    );
    assert.equal(period.length, 1001);
  } finally {
    kv.close();
  }
});

Deno.test("the CSV export neutralises cells a spreadsheet would run; JSON shows the values as they are", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("1");
    const name = '=HYPERLINK("http://evil.example","open")';
    const key = await json(await t.call(mgmt, "POST", "/v1/keys", { name }), 201);
    await chat(t, key.key, { "user-agent": "@SUM(1+1)" });
    // A refused request keeps the model the client named.
    const refused = await t.call(key.key, "POST", "/v1/chat/completions", {
      model: "-2+3",
      messages: [{ role: "user", content: "hi" }],
    });
    await json(refused, 404);
    await t.router.flush();

    const csv = await (await t.call(mgmt, "GET", "/v1/audit/export?format=csv")).text();
    const [header, ...rows] = parseCsv(csv);
    const cell = (row: string[], c: string) => row[header.indexOf(c)];
    assert.deepEqual(rows.map((r) => cell(r, "key_name")), ["'" + name, "'" + name]);
    assert.deepEqual(rows.map((r) => cell(r, "model")), ["'-2+3", "gpt-4o-mini"]);
    assert.equal(cell(rows[1], "user_agent"), "'@SUM(1+1)");
    // Numbers stay numbers.
    assert.match(cell(rows[1], "cost"), /^\d+(\.\d+)?$/);
    assert.match(cell(rows[1], "prompt_tokens"), /^\d+$/);

    const exported = await json(await t.call(mgmt, "GET", "/v1/audit/export?format=json"), 200);
    assert.deepEqual(exported.map((r: { key_name: string }) => r.key_name), [name, name]);
    assert.deepEqual(exported.map((r: { model: string }) => r.model), ["-2+3", "gpt-4o-mini"]);
    assert.equal(exported[1].user_agent, "@SUM(1+1)");
    const listed = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    assert.deepEqual(listed.data, exported);
  } finally {
    await t.close();
  }
});
