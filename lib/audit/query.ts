import type { AuditRow } from "../billing/types.ts";
import { formatUsd } from "../money.ts";
import { page } from "../kv/util.ts";

export interface AuditFilter {
  fromMs: number;
  toMs: number;
  key_id?: string;
  provider?: string;
  model?: string;
  status?: number;
  streaming?: boolean;
}

/** API.md's audit columns, in order: the CSV header and the JSON row's fields. */
export const AUDIT_COLUMNS = [
  "timestamp",
  "request_id",
  "key_id",
  "key_name",
  "provider",
  "model",
  "prompt_tokens",
  "completion_tokens",
  "cached_tokens",
  "cache_write_tokens",
  "reasoning_tokens",
  "cost",
  "market_cost",
  "latency_ms",
  "status",
  "streaming",
  "client_ip",
  "user_agent",
] as const;

const matches = (r: AuditRow, f: AuditFilter) =>
  (f.key_id === undefined || r.key_id === f.key_id) &&
  (f.provider === undefined || r.provider === f.provider) &&
  (f.model === undefined || r.model === f.model) &&
  (f.status === undefined || r.status === f.status) &&
  (f.streaming === undefined || r.streaming === f.streaming);

function listAuditRange(kv: Deno.Kv, accountId: string, f: AuditFilter, cursor?: string) {
  return kv.list<AuditRow>({
    start: ["audit", accountId, f.fromMs],
    end: ["audit", accountId, f.toMs + 1],
  }, { reverse: true, cursor, batchSize: 500 });
}

/** A page of audit rows, newest first. */
export function listAuditByAccount(
  kv: Deno.Kv,
  accountId: string,
  f: AuditFilter,
  limit: number,
  cursor?: string,
) {
  return page(
    listAuditRange(kv, accountId, f, cursor),
    limit,
    (r) => matches(r, f) ? auditJson(r) : null,
  );
}

/** An audit row as the API shows it (money as decimal strings). */
export function auditJson(r: AuditRow) {
  return {
    timestamp: r.timestamp,
    request_id: r.request_id,
    key_id: r.key_id,
    key_name: r.key_name,
    provider: r.provider,
    model: r.model,
    prompt_tokens: r.prompt_tokens,
    completion_tokens: r.completion_tokens,
    cached_tokens: r.cached_tokens,
    cache_write_tokens: r.cache_write_tokens,
    reasoning_tokens: r.reasoning_tokens,
    cost: formatUsd(r.cost),
    market_cost: formatUsd(r.market_cost),
    latency_ms: r.latency_ms,
    status: r.status,
    streaming: r.streaming,
    client_ip: r.client_ip,
    user_agent: r.user_agent,
    error_code: r.error_code,
  };
}

/** One RFC 4180 field: quoted when it holds a comma, quote, CR or LF; quotes doubled. */
export function csvField(v: string | number | boolean): string {
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

function csvLine(r: AuditRow): string {
  const j = auditJson(r);
  return AUDIT_COLUMNS.map((c) => csvField(j[c])).join(",") + "\r\n";
}

/**
 * The audit rows of a period as a byte stream (CSV or a JSON array), newest first, read from KV
 * a batch at a time as the client consumes it, so memory stays flat whatever the size.
 */
export function exportAudit(
  kv: Deno.Kv,
  accountId: string,
  f: AuditFilter,
  format: "csv" | "json",
): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  const iter = listAuditRange(kv, accountId, f);
  let started = false;
  let first = true;
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      let out = "";
      if (!started) {
        started = true;
        out = format === "csv" ? AUDIT_COLUMNS.join(",") + "\r\n" : "[";
      }
      let n = 0;
      while (n < 500) {
        const next = await iter.next();
        if (next.done) {
          if (format === "json") out += "]";
          if (out) ctrl.enqueue(encoder.encode(out));
          ctrl.close();
          return;
        }
        const row = next.value.value;
        if (!matches(row, f)) continue;
        n++;
        if (format === "csv") out += csvLine(row);
        else {
          out += (first ? "" : ",") + JSON.stringify(auditJson(row));
          first = false;
        }
      }
      ctrl.enqueue(encoder.encode(out));
    },
  }, { highWaterMark: 0 });
}
