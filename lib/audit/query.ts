import type { AuditRow } from "../billing/types.ts";
import { AUDIT_COLUMNS, auditJson, csvLine, decodeAuditRow } from "./row.ts";
import {
  ACCOUNT_PREFIX,
  accountIdOfKey,
  auditIdKey,
  auditKey,
  auditKeyParts,
  auditRange,
  requestIdOfAuditId,
} from "../kv/schema.ts";
import { InvalidInput } from "../errors.ts";
import { getAll, rowCursor, rowCursorAt } from "../kv/util.ts";

export interface AuditFilter {
  /** Start (inclusive) and end (exclusive) of the period, epoch ms. */
  fromMs: number;
  toMs: number;
  key_id?: string;
  provider?: string;
  model?: string;
  status?: number;
  streaming?: boolean;
}

const matches = (r: AuditRow, f: AuditFilter) =>
  (f.key_id === undefined || r.key_id === f.key_id) &&
  (f.provider === undefined || r.provider === f.provider) &&
  (f.model === undefined || r.model === f.model) &&
  (f.status === undefined || r.status === f.status) &&
  (f.streaming === undefined || r.streaming === f.streaming);

/** Does the filter test the rows themselves, beyond the period in their keys? */
const filters = (f: AuditFilter) =>
  f.key_id !== undefined || f.provider !== undefined || f.model !== undefined ||
  f.status !== undefined || f.streaming !== undefined;

/**
 * The rows of a period, newest first: a first batch of `first` rows, then batches of 1,000 for
 * as long as the caller reads on. A page reads a page and one row past it, so an unfiltered page
 * is one batch of its own size; a filter that skips rows goes on in large batches.
 */
async function* listAuditRange(
  kv: Deno.Kv,
  accountId: string,
  f: AuditFilter,
  first: number,
  end?: Deno.KvKey,
): AsyncGenerator<Deno.KvEntry<Uint8Array>> {
  const range = auditRange(accountId, f.fromMs, f.toMs);
  const selector = end ? { ...range, end } : range;
  const head = kv.list<Uint8Array>(selector, { reverse: true, limit: first, batchSize: first });
  let n = 0;
  for await (const e of head) {
    n++;
    yield e;
  }
  if (n < first) return;
  yield* kv.list<Uint8Array>(selector, { reverse: true, cursor: head.cursor, batchSize: 1000 });
}

/** A page stops after scanning this many rows, so a rare filter cannot make one request slow. */
const MAX_SCAN = 20_000;

function decodeCursor(accountId: string, cursor: string): Deno.KvKey {
  const at = rowCursorAt(cursor);
  if (!at) throw new InvalidInput("Invalid 'cursor': not a cursor this endpoint returned");
  return auditKey(accountId, at.ms, at.id);
}

/**
 * A page of audit rows, newest first. The cursor names the last row seen and the next page starts
 * strictly below it, so rows recorded meanwhile (newer) neither shift nor repeat the pages.
 */
export async function listAuditByAccount(
  kv: Deno.Kv,
  accountId: string,
  f: AuditFilter,
  limit: number,
  cursor?: string,
): Promise<{ data: ReturnType<typeof auditJson>[]; next_cursor: string | null }> {
  let end: Deno.KvKey | undefined;
  if (cursor) {
    end = decodeCursor(accountId, cursor);
    const { ms } = auditKeyParts(end);
    if (ms >= f.toMs) end = undefined;
    // Below the period's start nothing is left (and the range would end before it starts).
    else if (ms < f.fromMs) return { data: [], next_cursor: null };
  }
  const data: ReturnType<typeof auditJson>[] = [];
  let scanned = 0;
  let last: Deno.KvKey | null = null;
  for await (const e of listAuditRange(kv, accountId, f, Math.min(limit + 1, 1000), end)) {
    if (data.length === limit || scanned === MAX_SCAN) {
      return { data, next_cursor: rowCursor(last!) };
    }
    scanned++;
    last = e.key;
    const row = decodeAuditRow(e.value);
    if (matches(row, f)) data.push(auditJson(row));
  }
  return { data, next_cursor: null };
}

/** One audit row by its request id, or null. */
export async function getAuditRow(
  kv: Deno.Kv,
  accountId: string,
  requestId: string,
): Promise<AuditRow | null> {
  const at = await kv.get<number>(auditIdKey(accountId, requestId));
  if (at.value === null) return null;
  const row = await kv.get<Uint8Array>(auditKey(accountId, at.value, requestId));
  return row.value === null ? null : decodeAuditRow(row.value);
}

/** A failed attempt's request id: the request's own id, a dot and the attempt number. */
const ATTEMPT_SUFFIX = /^\.(\d+)$/;

/**
 * The audit rows of a request's failed attempts (request ids `{requestId}.N`), in attempt order.
 * They are found through the request-id index: a range from `{requestId}.` up to `{requestId}/`
 * (`/` follows `.`) holds exactly the ids that continue with a dot; `.10` sorts before `.2` there,
 * so the rows are ordered by their number.
 */
export async function getAuditAttempts(
  kv: Deno.Kv,
  accountId: string,
  requestId: string,
): Promise<AuditRow[]> {
  const found: { n: number; key: Deno.KvKey }[] = [];
  const ids = kv.list<number>({
    start: auditIdKey(accountId, requestId + "."),
    end: auditIdKey(accountId, requestId + "/"),
  });
  for await (const e of ids) {
    const id = requestIdOfAuditId(e.key);
    const m = ATTEMPT_SUFFIX.exec(id.slice(requestId.length));
    if (m) found.push({ n: Number(m[1]), key: auditKey(accountId, e.value, id) });
  }
  found.sort((a, b) => a.n - b.n);
  const rows = await getAll<Uint8Array>(kv, found.map((f) => f.key));
  return rows.flatMap((r) => r.value === null ? [] : [decodeAuditRow(r.value)]);
}

/**
 * Deletes audit rows older than `beforeMs` and their request-id index entries, every account,
 * a few hundred per atomic. The ledger and the rollups are kept. Returns how many rows went.
 */
export async function pruneAudit(kv: Deno.Kv, beforeMs: number): Promise<number> {
  let deleted = 0;
  for await (const acct of kv.list({ prefix: ACCOUNT_PREFIX })) {
    const accountId = accountIdOfKey(acct.key);
    for (;;) {
      const atomic = kv.atomic();
      let n = 0;
      const iter = kv.list(auditRange(accountId, 0, beforeMs), { limit: 400 });
      for await (const e of iter) {
        atomic.delete(e.key).delete(auditIdKey(accountId, auditKeyParts(e.key).requestId));
        n++;
      }
      if (n === 0) break;
      await atomic.commit();
      deleted += n;
      if (n < 400) break;
    }
  }
  return deleted;
}

const encoder = new TextEncoder();
const CSV_HEADER = encoder.encode(AUDIT_COLUMNS.join(",") + "\r\n");

/**
 * The audit rows of a period as a byte stream (CSV or a JSON array), newest first, read from KV
 * a page at a time as the client consumes it, so memory stays flat whatever the size.
 *
 * Rows are stored as their CSV lines (lib/audit/row.ts), so the CSV export copies each page's
 * lines into one chunk as they are; rows are decoded only to test filters or to write JSON.
 *
 * The period is read as consecutive time slices of about a page each, two reads in flight: the
 * next slice's first page is read while the current one is continued or copied out. Reading a
 * page (most of the cost) then overlaps the next read, which one range read after the other
 * cannot do: a range's next page needs its previous page's last key.
 */
export function exportAudit(
  kv: Deno.Kv,
  accountId: string,
  f: AuditFilter,
  format: "csv" | "json",
): ReadableStream<Uint8Array> {
  const PAGE = 1000;
  const filtered = filters(f);
  type Rows = Deno.KvEntry<Uint8Array>[];
  const read = async (selector: Deno.KvListSelector, limit: number) => {
    const rows: Rows = [];
    for await (
      const e of kv.list<Uint8Array>(selector, { reverse: true, limit, batchSize: limit })
    ) {
      rows.push(e);
    }
    return rows;
  };
  // A slice [lo, hi) of the period (epoch ms) and its page being read.
  interface Slice {
    lo: number;
    hi: number;
    page: Promise<Rows>;
  }
  // One page of a slice, below `end` when continuing it.
  const fetchPage = (lo: number, hi: number, end?: Deno.KvKey) => {
    const range = auditRange(accountId, lo, hi);
    const page = read(end ? { ...range, end } : range, PAGE);
    // A slice read ahead may fail after the stream was cancelled; the awaited one still throws.
    page.catch(() => {});
    return page;
  };
  // Slices are cut downwards from `hi` to `floor`; the width adapts to the rows per slice.
  let hi = 0, floor = 0, width = 60_000;
  const slices: Slice[] = [];
  const topUp = () => {
    while (slices.length < 2 && hi > floor) {
      const lo = Math.max(floor, hi - width);
      slices.push({ lo, hi, page: fetchPage(lo, hi) });
      hi = lo;
    }
  };
  let started = false;
  let done = false;
  let first = true;
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      // What this pull enqueues: CSV lines as stored (`size` bytes in all), or JSON text.
      const lines: Uint8Array[] = [];
      let size = 0;
      let json = "";
      if (!started) {
        started = true;
        if (format === "csv") {
          lines.push(CSV_HEADER);
          size = CSV_HEADER.length;
        } else json = "[";
        // The period's newest and oldest rows bound the slices.
        const range = auditRange(accountId, f.fromMs, f.toMs);
        const [newest] = await read(range, 1);
        const oldest = newest
          ? (await Array.fromAsync(kv.list(range, { limit: 1 })))[0]
          : undefined;
        if (newest && oldest) {
          hi = auditKeyParts(newest.key).ms + 1;
          floor = auditKeyParts(oldest.key).ms;
          topUp();
        }
      }
      // Skip slices the filters empty entirely, so every pull yields bytes or ends the stream.
      while (!done && slices.length > 0) {
        const slice = slices[0];
        const rows = await slice.page;
        if (done) return;
        if (rows.length === PAGE) {
          // A full page: the slice goes on below its last row, and the next slices are narrower.
          slice.page = fetchPage(slice.lo, slice.hi, rows[PAGE - 1].key);
          width = Math.max(1, Math.floor(width / 2));
        } else {
          slices.shift();
          if (rows.length < PAGE / 4) width *= 2;
        }
        topUp();
        if (format === "csv") {
          for (const { value } of rows) {
            if (filtered && !matches(decodeAuditRow(value), f)) continue;
            const line = csvLine(value);
            lines.push(line);
            size += line.length;
          }
          if (size) break;
        } else {
          for (const { value } of rows) {
            const row = decodeAuditRow(value);
            if (!matches(row, f)) continue;
            json += (first ? "" : ",") + JSON.stringify(auditJson(row));
            first = false;
          }
          if (json) break;
        }
      }
      const end = slices.length === 0;
      if (format === "csv" && size) {
        const chunk = new Uint8Array(size);
        let at = 0;
        for (const line of lines) {
          chunk.set(line, at);
          at += line.length;
        }
        ctrl.enqueue(chunk);
      } else if (format === "json") {
        if (end) json += "]";
        if (json) ctrl.enqueue(encoder.encode(json));
      }
      if (end) ctrl.close();
    },
    cancel() {
      done = true;
      slices.length = 0;
    },
  }, { highWaterMark: 0 });
}
