/**
 * The stored form of an audit row: the UTF-8 bytes of its CSV line exactly as the export writes it
 * (AUDIT_COLUMNS, RFC 4180, ending in CRLF, text cells neutralised against formula injection),
 * then `'` and its error code (empty when null). Audit rows never change, so the export copies
 * these bytes as they are instead of deserializing and formatting every row; the other readers
 * decode them. Rows stored before cells were neutralised lack the `'` and are rewritten on export.
 *
 * @module
 */
import type { AuditRow } from "../billing/types.ts";
import { formatUsd, parseUsd } from "../money.ts";

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

/**
 * formatUsd, faster for the usual amounts: within 2^53 nano-USD (about 9 million USD) they are
 * split with exact double arithmetic (`%` is exact, and `x - f` is a multiple of 1e9), which costs
 * a fraction of the bigint division; anything else goes through formatUsd itself.
 */
export function csvUsd(n: bigint): string {
  if (n < 0n || n > 9007199254740991n) return formatUsd(n);
  const x = Number(n);
  let f = x % 1e9;
  const whole = (x - f) / 1e9;
  if (f === 0) return String(whole);
  let digits = 9;
  while (f % 10 === 0) {
    f /= 10;
    digits--;
  }
  const s = String(f);
  return `${whole}.${s.length < digits ? "0".repeat(digits - s.length) + s : s}`;
}

const NEEDS_QUOTES = /[",\r\n]/;
/** One RFC 4180 field: quoted when it holds a comma, quote, CR or LF; quotes doubled. */
const quote = (v: string) => NEEDS_QUOTES.test(v) ? `"${v.replaceAll('"', '""')}"` : v;

/**
 * A text value a spreadsheet would take for a formula: it begins with `=`, `+`, `-`, `@`, tab or
 * CR (OWASP's CSV injection list). Such a cell gets an apostrophe in front, which spreadsheets
 * read as "text" and do not show; a value that begins with an apostrophe gets one too, so that
 * the stored cell decodes to the value exactly.
 */
const ESCAPED_START = /^[=+\-@\t\r']/;
const textCell = (v: string) => quote(ESCAPED_START.test(v) ? "'" + v : v);
/** A text cell's value back from a neutralised cell. */
const untext = (cell: string) => cell.charCodeAt(0) === 39 ? cell.slice(1) : cell;

/** What follows the CRLF of a row stored with neutralised cells, before its error code. */
const NEUTRAL = "'";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * An audit row's stored bytes: its CSV line in AUDIT_COLUMNS order (text cells neutralised), CRLF,
 * `'`, then its error code. Error codes are the API's snake_case codes; a line break in one (which
 * would hide where the CSV line ends) is written as a space.
 *
 * @example
 * const bytes = encodeAuditRow(row);
 * bytes.subarray(0, csvLength(bytes)); // the row's line of the CSV export
 * decodeAuditRow(bytes); // the row again
 */
export function encodeAuditRow(r: AuditRow): Uint8Array {
  const line = `${textCell(r.timestamp)},${textCell(r.request_id)},${textCell(r.key_id)},${
    textCell(r.key_name)
  },${textCell(r.provider)},${
    textCell(r.model)
  },${r.prompt_tokens},${r.completion_tokens},${r.cached_tokens},${r.cache_write_tokens},${r.reasoning_tokens},${
    csvUsd(r.cost)
  },${csvUsd(r.market_cost)},${r.latency_ms},${r.status},${r.streaming},${textCell(r.client_ip)},${
    textCell(r.user_agent)
  }\r\n`;
  return encoder.encode(line + NEUTRAL + (r.error_code ?? "").replace(/[\r\n]/g, " "));
}

/**
 * The length of the CSV line at the start of stored audit row bytes (its CRLF included): the
 * error code after it holds no line feed, so the line ends at the last one.
 */
export const csvLength = (bytes: Uint8Array): number => bytes.lastIndexOf(10) + 1;

/**
 * The export's CSV line of stored audit row bytes: the stored line itself, or for a row stored
 * before cells were neutralised, the line written anew.
 */
export function csvLine(bytes: Uint8Array): Uint8Array {
  const n = csvLength(bytes);
  if (bytes[n] === 39) return bytes.subarray(0, n);
  const fresh = encodeAuditRow(decodeAuditRow(bytes));
  return fresh.subarray(0, csvLength(fresh));
}

/** Splits one CSV record (without its line ending) into its fields. */
function parseRecord(s: string): string[] {
  const fields: string[] = [];
  let i = 0;
  for (;;) {
    if (s.charCodeAt(i) === 34) {
      // Quoted: runs to the quote not followed by another one; doubled quotes are one.
      let v = "";
      i++;
      for (;;) {
        const q = s.indexOf('"', i);
        if (q === -1) throw new SyntaxError("Audit row has an unterminated quoted field");
        v += s.slice(i, q);
        if (s.charCodeAt(q + 1) !== 34) {
          i = q + 1;
          break;
        }
        v += '"';
        i = q + 2;
      }
      fields.push(v);
    } else {
      const c = s.indexOf(",", i);
      const stop = c === -1 ? s.length : c;
      fields.push(s.slice(i, stop));
      i = stop;
    }
    if (i === s.length) return fields;
    if (s.charCodeAt(i) !== 44) throw new SyntaxError("Audit row has text after a quoted field");
    i++;
  }
}

function num(text: string): number {
  const n = Number(text);
  if (text === "" || !Number.isFinite(n)) {
    throw new SyntaxError(`Audit row has a malformed number: ${text}`);
  }
  return n;
}

function bool(text: string): boolean {
  if (text === "true" || text === "false") return text === "true";
  throw new SyntaxError(`Audit row has a malformed boolean: ${text}`);
}

function money(text: string): bigint {
  const n = parseUsd(text);
  if (n === null) throw new SyntaxError(`Audit row has a malformed amount: ${text}`);
  return n;
}

/**
 * An audit row back from its stored bytes (encodeAuditRow's inverse; an empty error code is
 * null).
 */
export function decodeAuditRow(bytes: Uint8Array): AuditRow {
  const text = decoder.decode(bytes);
  const lf = text.lastIndexOf("\n");
  if (lf < 1 || text.charCodeAt(lf - 1) !== 13) {
    throw new SyntaxError("Audit row does not end its CSV line with CRLF");
  }
  const f = parseRecord(text.slice(0, lf - 1));
  if (f.length !== AUDIT_COLUMNS.length) {
    throw new SyntaxError(`Audit row has ${f.length} fields, not ${AUDIT_COLUMNS.length}`);
  }
  let error = text.slice(lf + 1);
  // Rows stored before cells were neutralised hold every text cell as it was.
  const neutral = error.startsWith(NEUTRAL);
  if (neutral) error = error.slice(1);
  const t = neutral ? untext : (cell: string) => cell;
  return {
    timestamp: t(f[0]),
    request_id: t(f[1]),
    key_id: t(f[2]),
    key_name: t(f[3]),
    provider: t(f[4]),
    model: t(f[5]),
    prompt_tokens: num(f[6]),
    completion_tokens: num(f[7]),
    cached_tokens: num(f[8]),
    cache_write_tokens: num(f[9]),
    reasoning_tokens: num(f[10]),
    cost: money(f[11]),
    market_cost: money(f[12]),
    latency_ms: num(f[13]),
    status: num(f[14]),
    streaming: bool(f[15]),
    client_ip: t(f[16]),
    user_agent: t(f[17]),
    error_code: error === "" ? null : error,
  };
}

/**
 * An audit row as the API shows it (money as decimal strings): the JSON export's row, the CSV
 * line's columns and its error code.
 */
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
