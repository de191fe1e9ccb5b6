import assert from "node:assert/strict";
import { json, padding, startRouter, type TestRouter } from "../../_helpers.ts";
import { parseUsd } from "../../../lib/money.ts";

const HEADER =
  "timestamp,request_id,key_id,key_name,provider,model,prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost,market_cost,latency_ms,status,streaming,client_ip,user_agent";

/** An RFC 4180 parser (quoted fields, doubled quotes, CRLF records), strict about stray quotes. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let i = 0;
  let quoted = false;
  while (i < text.length) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        field += '"';
        i += 2;
      } else if (ch === '"') {
        quoted = false;
        i++;
        assert.ok(i >= text.length || text[i] === "," || text[i] === "\r", "quote closes a field");
      } else {
        field += ch;
        i++;
      }
    } else if (ch === '"') {
      assert.equal(field, "", "a quote only opens a field");
      quoted = true;
      i++;
    } else if (ch === ",") {
      row.push(field);
      field = "";
      i++;
    } else if (ch === "\r" && text[i + 1] === "\n") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      i += 2;
    } else {
      assert.ok(ch !== "\n" && ch !== "\r", "bare line breaks only inside quotes");
      field += ch;
      i++;
    }
  }
  assert.equal(field + row.join(""), "", "the last record ends with CRLF");
  return rows;
}

/** Follows `next_cursor` to the end; returns every page's ids. */
async function allPages(t: TestRouter, key: string, path: string, limit: number) {
  const pages: string[][] = [];
  let cursor: string | null = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const url: string = `${path}${sep}limit=${limit}${
      cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""
    }`;
    const page = await json(await t.call(key, "GET", url), 200);
    assert.ok(page.data.length <= limit);
    pages.push(page.data.map((r: { id?: string; request_id?: string }) => r.id ?? r.request_id));
    cursor = page.next_cursor;
    assert.ok(pages.length < 100, "paging ends");
  } while (cursor);
  return pages;
}

const chat = (model = "gpt-4o-mini", extra: Record<string, unknown> = {}) => ({
  model,
  messages: [{ role: "user", content: "hello" }],
  ...extra,
});

Deno.test("/v1/transactions pages newest first with next_cursor: no skip, no repeat", async () => {
  const t = await startRouter();
  try {
    const { id, key, mgmt } = await t.account("0");
    for (let i = 1; i <= 23; i++) {
      await json(
        await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
          amount: `0.0${String(i).padStart(2, "0")}`,
          reason: `grant ${i}`,
        }),
        201,
      );
      if (i % 3 === 0) {
        const body = chat("gpt-4o-mini", { max_tokens: 16 });
        await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);
      }
    }
    await t.router.flush();
    const full = await json(await t.call(mgmt, "GET", "/v1/transactions?limit=1000"), 200);
    assert.equal(full.data.length, 30);
    assert.equal(full.next_cursor, null);
    const times = full.data.map((e: { created_at: string }) => e.created_at);
    assert.deepEqual(times, [...times].sort().reverse(), "newest first");
    for (const limit of [1, 7, 10, 30]) {
      const pages = await allPages(t, mgmt, "/v1/transactions", limit);
      assert.deepEqual(pages.flat(), full.data.map((e: { id: string }) => e.id), `limit ${limit}`);
    }
    // Filtered by type, the pages still cover exactly that type.
    const debits = (await allPages(t, mgmt, "/v1/transactions?type=usage_debit", 3)).flat();
    assert.equal(debits.length, 7);
    assert.equal(new Set(debits).size, 7);
    const adjustments = (await allPages(t, mgmt, "/v1/transactions?type=adjustment", 4)).flat();
    assert.equal(adjustments.length, 23);
    // Each entry's balance_after chains with the next older one.
    const amounts = full.data.map((e: { amount: string; balance_after: string }) => e);
    for (let i = 0; i + 1 < amounts.length; i++) {
      const nano = (s: string) => parseUsd(s)!;
      assert.equal(
        nano(amounts[i].balance_after) - nano(amounts[i].amount),
        nano(amounts[i + 1].balance_after),
      );
    }
    for (const bad of ["limit=0", "limit=1001", "limit=x", "type=bogus", "cursor=%25%25"]) {
      const res = await json(await t.call(mgmt, "GET", `/v1/transactions?${bad}`), 400);
      assert.equal(res.error.code, "invalid_request");
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("/v1/audit filters and pages; the export is RFC 4180 CSV with API.md's header, or JSON", async () => {
  const t = await startRouter();
  try {
    const a = await t.account("1");
    const name = 'Team "A", Ünïcødé 🚀\nsecond line';
    const b = await json(await t.call(a.mgmt, "POST", "/v1/keys", { name }), 201);
    const poor = await json(
      await t.call(a.mgmt, "POST", "/v1/keys", { name: "capped", credit_limit: "0" }),
      201,
    );
    const ua = { "user-agent": 'bench, "v2"' };
    await json(await t.call(a.key, "POST", "/v1/chat/completions", chat(), ua), 200);
    await json(await t.call(b.key, "POST", "/v1/chat/completions", chat()), 200);
    const s = await t.call(
      b.key,
      "POST",
      "/v1/chat/completions",
      chat("gpt-4o-mini", { stream: true }),
    );
    assert.equal(s.status, 200);
    await s.text();
    await json(
      await t.call(b.key, "POST", "/v1/embeddings", {
        model: "text-embedding-3-small",
        input: "x",
      }),
      200,
    );
    await json(await t.call(poor.key, "POST", "/v1/chat/completions", chat()), 402);
    await t.router.flush();

    const all = await json(await t.call(a.mgmt, "GET", "/v1/audit"), 200);
    assert.equal(all.data.length, 5);
    assert.equal(all.next_cursor, null);
    const q = async (query: string) =>
      (await json(await t.call(a.mgmt, "GET", `/v1/audit?${query}`), 200)).data;
    assert.equal((await q(`key_id=${b.id}`)).length, 3);
    assert.equal((await q(`key_id=${a.keyId}`)).length, 1);
    assert.equal((await q("model=text-embedding-3-small")).length, 1);
    assert.equal((await q("provider=openai")).length, 5);
    assert.equal((await q("status=402")).length, 1);
    assert.equal((await q("status=200")).length, 4);
    assert.equal((await q("streaming=true")).length, 1);
    assert.equal((await q(`key_id=${b.id}&streaming=false&model=gpt-4o-mini`)).length, 1);
    assert.equal((await q("from=2000-01-01&to=2000-12-31")).length, 0);
    const refused = (await q("status=402"))[0];
    assert.equal(refused.cost, "0");
    assert.equal(refused.error_code, "key_limit_exceeded");
    const pages = await allPages(t, a.mgmt, "/v1/audit", 2);
    assert.deepEqual(pages.flat(), all.data.map((r: { request_id: string }) => r.request_id));
    const filteredPages = await allPages(t, a.mgmt, `/v1/audit?key_id=${b.id}`, 1);
    assert.equal(filteredPages.flat().length, 3);
    await json(await t.call(a.mgmt, "GET", "/v1/audit?status=abc"), 400);
    await json(await t.call(a.mgmt, "GET", "/v1/audit?from=yesterday"), 400);

    const csvRes = await t.call(a.mgmt, "GET", "/v1/audit/export?format=csv");
    assert.equal(csvRes.status, 200);
    assert.match(csvRes.headers.get("content-type")!, /^text\/csv/);
    assert.match(
      csvRes.headers.get("content-disposition")!,
      /attachment; filename="audit-.*\.csv"/,
    );
    const bytes = new Uint8Array(await csvRes.arrayBuffer());
    assert.notDeepEqual([...bytes.slice(0, 3)], [0xef, 0xbb, 0xbf], "no BOM");
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    assert.ok(text.startsWith(HEADER + "\r\n"), "the header exactly as API.md");
    const rows = parseCsv(text);
    assert.deepEqual(rows[0], HEADER.split(","));
    assert.equal(rows.length, 6);
    for (const row of rows.slice(1)) assert.equal(row.length, 18);
    const col = (n: string) => HEADER.split(",").indexOf(n);
    const byId = new Map(rows.slice(1).map((r) => [r[col("request_id")], r]));
    for (const r of all.data) {
      const row = byId.get(r.request_id)!;
      assert.equal(row[col("key_name")], r.key_name);
      assert.equal(row[col("user_agent")], r.user_agent);
      assert.equal(row[col("cost")], r.cost);
      assert.equal(row[col("streaming")], String(r.streaming));
      assert.match(row[col("timestamp")], /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    }
    assert.ok(rows.some((r) => r[col("key_name")] === name), "name with comma, quote, newline");
    assert.ok(rows.some((r) => r[col("user_agent")] === 'bench, "v2"'));
    assert.ok(text.includes('"Team ""A"", Ünïcødé 🚀\nsecond line"'));

    const jsonRes = await t.call(a.mgmt, "GET", `/v1/audit/export?format=json&key_id=${b.id}`);
    assert.match(jsonRes.headers.get("content-type")!, /^application\/json/);
    const exported = await jsonRes.json();
    assert.ok(Array.isArray(exported));
    assert.deepEqual(exported, await q(`key_id=${b.id}`));
    const filteredCsv = parseCsv(
      await (await t.call(a.mgmt, "GET", "/v1/audit/export?format=csv&status=402")).text(),
    );
    assert.equal(filteredCsv.length, 2);
    const none = await (await t.call(a.mgmt, "GET", "/v1/audit/export?format=json&model=none"))
      .json();
    assert.deepEqual(none, []);
    await json(await t.call(a.mgmt, "GET", "/v1/audit/export?format=xml"), 400);
    // The other account sees none of it.
    const other = await t.account("1");
    assert.deepEqual((await json(await t.call(other.mgmt, "GET", "/v1/audit"), 200)).data, []);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("/v1/credits and /v1/key agree with the ledger", async () => {
  const t = await startRouter();
  try {
    const { id, key, mgmt } = await t.account("2");
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/refunds`, { amount: "0.5", reason: "r" }),
      201,
    );
    t.openai.scenario = { usage: { prompt_tokens: 1000, completion_tokens: 200 } };
    await json(
      await t.call(key, "POST", "/v1/chat/completions", chat("gpt-4o-mini", padding())),
      200,
    );
    // (1000 × 0.15 + 200 × 0.6) µ$ × 0.8 = $0.000216
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.deepEqual(credits, {
      balance: "2.499784",
      reserved: "0",
      available: "2.499784",
      total_purchased: "0",
      total_used: "0.000216",
    });
    const self = await json(await t.call(key, "GET", "/v1/key"), 200);
    assert.equal(self.spend, "0.000216");
    assert.equal(self.usage_today, "0.000216");
    assert.equal(self.usage_month, "0.000216");
    assert.equal(self.credit_limit, null);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
