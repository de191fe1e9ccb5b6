import assert from "node:assert/strict";
import {
  AUDIT_COLUMNS,
  csvLength,
  decodeAuditRow,
  encodeAuditRow,
} from "../../../lib/audit/row.ts";
import {
  type AuditFilter,
  exportAudit,
  getAuditRow,
  listAuditByAccount,
} from "../../../lib/audit/query.ts";
import { auditBytesOf, auditRowOf } from "../../../lib/audit/recorder.ts";
import { auditIdKey, auditKey } from "../../../lib/kv/schema.ts";
import { formatUsd } from "../../../lib/money.ts";
import type { AuditRow } from "../../../lib/billing/types.ts";
import { usageEvent } from "../../_fixtures.ts";
import { parseCsv } from "../../_csv.ts";

const T0 = Date.UTC(2026, 3, 1, 12);

/** Rows with every awkward value a column can hold, one millisecond apart (oldest first). */
function nastyRows(): AuditRow[] {
  const texts = [
    'Ops, "Team" A\r\nZürich 🚀',
    "",
    '"',
    '""',
    'ends with a quote"',
    "trailing comma,",
    "lone\rCR and lone\nLF",
    "\r\n",
    "naïve 日本語 ☃",
    'Mozilla/5.0 (X11; "bench", x)',
    // What a spreadsheet would run as a formula, and apostrophes (the neutralising mark).
    '=HYPERLINK("http://x","y")',
    "+1+2",
    "-2+3",
    "@SUM(1)",
    "\tcmd",
    "'quoted",
    "'",
    "''=1",
    "a=1",
  ];
  const money = [0n, 1n, 999_999_999n, 1_000_000_000n, 12_500_000_000n, 2n ** 53n + 1n];
  return texts.map((text, i) =>
    auditRowOf(usageEvent({
      ts: T0 + i,
      request_id: i === 3 ? "req_with,comma" : `req_${i}`,
      key_id: `key_${i}`,
      key_name: text,
      provider: i % 2 ? "openai" : text,
      model: texts[(i + 3) % texts.length],
      prompt_tokens: i * 1_000_003,
      completion_tokens: 0,
      cached_tokens: i,
      cache_write_tokens: 2 * i,
      reasoning_tokens: 3 * i,
      cost: money[i % money.length],
      market_cost: i === 9 ? 10n ** 20n + 7n : money[(i + 2) % money.length],
      latency_ms: 17 * i,
      status: i % 3 ? 200 : 402,
      streaming: i % 2 === 0,
      client_ip: i % 2 ? "::1" : "",
      user_agent: texts[(i + 5) % texts.length],
      error_code: i % 3 ? null : "insufficient_credits",
    }))
  );
}

Deno.test("decodeAuditRow(encodeAuditRow(row)) is the row, field for field", () => {
  for (const row of nastyRows()) {
    const bytes = encodeAuditRow(row);
    assert.deepEqual(decodeAuditRow(bytes), row);
    // The error code follows the CSV line and the neutralised rows' mark.
    const code = new TextDecoder().decode(bytes.subarray(csvLength(bytes)));
    assert.equal(code, "'" + (row.error_code ?? ""));
  }
});

Deno.test("encodeAuditRow writes an error code with a line break as a space", () => {
  const [row] = nastyRows();
  const decoded = decodeAuditRow(encodeAuditRow({ ...row, error_code: "bad\ncode\r" }));
  assert.equal(decoded.error_code, "bad code ");
  assert.equal(decoded.user_agent, row.user_agent);
});

Deno.test("decodeAuditRow rejects bytes that are not an audit row", () => {
  const text = new TextEncoder();
  assert.throws(() => decodeAuditRow(text.encode("a,b,c\r\n")), SyntaxError);
  assert.throws(() => decodeAuditRow(text.encode("no line end")), SyntaxError);
  const [row] = nastyRows();
  const good = new TextDecoder().decode(encodeAuditRow(row));
  assert.throws(() => decodeAuditRow(text.encode(good.replace(",0,", ",x,"))), SyntaxError);
  assert.throws(() => decodeAuditRow(text.encode(good.replace(",true,", ",yes,"))), SyntaxError);
  // Ten fraction digits: finer than a nano-USD.
  const cost = good.replace(",0,0.999999999,", ",0.0000000001,0.999999999,");
  assert.notEqual(cost, good);
  assert.throws(() => decodeAuditRow(text.encode(cost)), SyntaxError);
});

Deno.test("the export emits each row's stored CSV line, and the line is the row's CSV", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const rows = nastyRows();
    const atomic = kv.atomic();
    for (const row of rows) {
      const ms = Date.parse(row.timestamp);
      atomic.set(auditKey("acct_r", ms, row.request_id), encodeAuditRow(row));
      atomic.set(auditIdKey("acct_r", row.request_id), ms);
    }
    assert.ok((await atomic.commit()).ok);
    const newestFirst = [...rows].reverse();
    const all = { fromMs: 0, toMs: Number.MAX_SAFE_INTEGER };

    const exported = async (f: AuditFilter) =>
      new Uint8Array(await new Response(exportAudit(kv, "acct_r", f, "csv")).bytes());
    // The header, then the stored lines of `rows`.
    const header = new TextEncoder().encode(AUDIT_COLUMNS.join(",") + "\r\n");
    const expected = (rows: AuditRow[]) =>
      new Uint8Array([header, ...rows.map(encodeAuditRow)].flatMap((b) => [
        ...b.subarray(0, csvLength(b)),
      ]));
    const csv = await exported(all);
    assert.deepEqual(csv, expected(newestFirst));

    // Read by an independent parser, every field is the row's own value, a text that begins
    // with a formula character or an apostrophe behind an apostrophe (OWASP's CSV injection rule).
    const parsed = parseCsv(new TextDecoder().decode(csv));
    assert.deepEqual(parsed[0], [...AUDIT_COLUMNS]);
    assert.deepEqual(
      parsed.slice(1),
      newestFirst.map((r) =>
        AUDIT_COLUMNS.map((c) => {
          const v = r[c];
          if (typeof v !== "string") return typeof v === "bigint" ? formatUsd(v) : String(v);
          return /^[=+\-@\t\r']/.test(v) ? "'" + v : v;
        })
      ),
    );
    for (const line of parsed.slice(1)) {
      assert.ok(line.every((cell) => !/^[=+\-@\t\r]/.test(cell)), `a formula cell in ${line}`);
    }
    // A filtered export keeps the matching lines, byte for byte.
    assert.deepEqual(
      await exported({ ...all, streaming: true }),
      expected(newestFirst.filter((r) => r.streaming)),
    );

    // The JSON export, the pages and the single row decode the same rows.
    const json = JSON.parse(
      await new Response(exportAudit(kv, "acct_r", all, "json")).text(),
    ) as Record<string, unknown>[];
    assert.deepEqual(json.map((r) => r.key_name), newestFirst.map((r) => r.key_name));
    assert.deepEqual(
      json.map((r) => r.market_cost),
      newestFirst.map((r) => formatUsd(r.market_cost)),
    );
    assert.deepEqual(json.map((r) => r.error_code), newestFirst.map((r) => r.error_code));
    const page = await listAuditByAccount(kv, "acct_r", all, 100);
    assert.deepEqual(page.data, json);
    for (const row of rows) assert.deepEqual(await getAuditRow(kv, "acct_r", row.request_id), row);
    assert.equal(await getAuditRow(kv, "acct_r", "req_missing"), null);
  } finally {
    kv.close();
  }
});

Deno.test("a row stored before cells were neutralised decodes as stored, exports neutralised", async () => {
  const [base] = nastyRows();
  const row = {
    ...base,
    key_name: "=1+2",
    model: "'x",
    user_agent: "@ua",
    error_code: "rate_limited",
  };
  // The stored form of the time: the CSV line as it was, CRLF, the error code (no mark).
  const stored = new TextDecoder().decode(encodeAuditRow({
    ...row,
    key_name: "KEYNAME",
    model: "MODEL",
    user_agent: "AGENT",
  })).replace("KEYNAME", "=1+2").replace("MODEL", "'x").replace("AGENT", "@ua")
    .replace("\r\n'", "\r\n");
  const bytes = new TextEncoder().encode(stored);
  assert.deepEqual(decodeAuditRow(bytes), row);
  const kv = await Deno.openKv(":memory:");
  try {
    const ms = Date.parse(row.timestamp);
    await kv.set(auditKey("acct_r", ms, row.request_id), bytes);
    const all = { fromMs: 0, toMs: Number.MAX_SAFE_INTEGER };
    const csv = await new Response(exportAudit(kv, "acct_r", all, "csv")).text();
    const [, line] = parseCsv(csv);
    const cell = (c: string) => line[AUDIT_COLUMNS.indexOf(c as typeof AUDIT_COLUMNS[number])];
    assert.deepEqual([cell("key_name"), cell("model"), cell("user_agent")], [
      "'=1+2",
      "''x",
      "'@ua",
    ]);
    const json = JSON.parse(await new Response(exportAudit(kv, "acct_r", all, "json")).text());
    assert.deepEqual([json[0].key_name, json[0].model, json[0].user_agent], ["=1+2", "'x", "@ua"]);
  } finally {
    kv.close();
  }
});

Deno.test("auditBytesOf stores what encodeAuditRow makes of the event's audit row", () => {
  const e = usageEvent({ key_name: 'x,"y"', error_code: "rate_limited", cost: 7n });
  assert.deepEqual(auditBytesOf(e), encodeAuditRow(auditRowOf(e)));
  assert.deepEqual(decodeAuditRow(auditBytesOf(e)), auditRowOf(e));
});
