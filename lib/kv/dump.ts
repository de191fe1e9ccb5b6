/**
 * A KV's durable state as a file, and back. Every entry but the ephemeral ones (EPHEMERAL_PREFIXES)
 * is written, whatever its prefix, as one JSON line `{"k": key, "v": value}` in the type-preserving
 * encoding of codec.ts, between a header line (format, format version, schema version) and a
 * trailer line counting the entries and carrying the SHA-256 of every line before it.
 */
import { createHash } from "node:crypto";
import { decodeKey, decodeValue, encodeKey, encodeValue, serializedBound } from "./codec.ts";
import { EPHEMERAL_PREFIXES, SCHEMA_VERSION_KEY } from "./schema.ts";
import { schemaVersion } from "./migrate.ts";
import { commitRetrying, keyBytes } from "./util.ts";
import { AtomicRoom } from "./limits.ts";

export const DUMP_FORMAT = "enterprise-router-kv";
export const DUMP_VERSION = 1;
// The longest line read: a 64 KiB value of characters JSON escapes as six is under 400 KiB.
const MAX_LINE_CHARS = 1 << 20;
const MAX_KEY_BYTES = 2048;
const MAX_VALUE_BYTES = 65_536;

export interface DumpHeader {
  format: string;
  version: number;
  schema_version: number;
  exported_at: string;
}

/** A file that is not a whole, unaltered dump, or a KV it may not be imported into. */
export class DumpError extends Error {
  override name = "DumpError";
}

const startsWith = (key: Deno.KvKey, prefix: Deno.KvKey) => prefix.every((p, i) => key[i] === p);
const ephemeral = (key: Deno.KvKey) => EPHEMERAL_PREFIXES.some((p) => startsWith(key, p));

/**
 * Writes every durable entry of `kv` through `write`, text chunks of whole lines. The listing is not
 * a snapshot: export a KV no router is writing (or check the books of the import).
 */
export async function exportKv(
  kv: Deno.Kv,
  write: (text: string) => Promise<void>,
): Promise<{ entries: number; schema_version: number }> {
  const hash = createHash("sha256");
  let chunk = "";
  const line = async (text: string) => {
    hash.update(text + "\n");
    chunk += text + "\n";
    if (chunk.length >= 1 << 16) {
      await write(chunk);
      chunk = "";
    }
  };
  const header: DumpHeader = {
    format: DUMP_FORMAT,
    version: DUMP_VERSION,
    schema_version: await schemaVersion(kv),
    exported_at: new Date().toISOString(),
  };
  await line(JSON.stringify(header));
  let entries = 0;
  for await (const e of kv.list({ prefix: [] }, { batchSize: 500 })) {
    if (ephemeral(e.key)) continue;
    let text: string;
    try {
      text = JSON.stringify({ k: encodeKey(e.key), v: encodeValue(e.value) });
    } catch (err) {
      throw new DumpError(`entry ${JSON.stringify(encodeKey(e.key))}: ${(err as Error).message}`);
    }
    await line(text);
    entries++;
  }
  await write(chunk + JSON.stringify({ end: true, entries, sha256: hash.digest("hex") }) + "\n");
  return { entries, schema_version: header.schema_version };
}

/** The lines of a file, each at most MAX_LINE_CHARS, as UTF-8 text (anything else is refused). */
async function* linesOf(path: string): AsyncGenerator<string> {
  const file = await Deno.open(path);
  const text = file.readable.pipeThrough(new TextDecoderStream("utf-8", { fatal: true }));
  let buf = "";
  try {
    for await (const chunk of text) {
      buf += chunk;
      let start = 0;
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n", start)) {
        yield buf.slice(start, nl);
        start = nl + 1;
      }
      buf = buf.slice(start);
      if (buf.length > MAX_LINE_CHARS) throw new DumpError("a line is over 1 MiB");
    }
  } catch (e) {
    if (e instanceof TypeError) throw new DumpError("the file is not UTF-8 text");
    throw e;
  }
  if (buf) yield buf;
}

interface Line {
  /** 1-based. */
  n: number;
  key: Deno.KvKey;
  value: unknown;
  text: string;
}

/**
 * Reads a dump through: its header, then each entry, decoded and checked; after the last entry,
 * the trailer's count and checksum are checked (a DumpError if they fail, or nothing follows them).
 */
async function* readDump(
  path: string,
  onHeader: (h: DumpHeader) => void,
): AsyncGenerator<Line> {
  const hash = createHash("sha256");
  let n = 0;
  let entries = 0;
  let ended = false;
  const parse = (text: string) => {
    try {
      const v = JSON.parse(text);
      if (v !== null && typeof v === "object" && !Array.isArray(v)) return v;
    } catch {
      // reported below
    }
    throw new DumpError(`line ${n}: not a JSON object`);
  };
  for await (const text of linesOf(path)) {
    n++;
    if (ended) {
      if (text.trim()) throw new DumpError(`line ${n}: after the trailer`);
      continue;
    }
    const o = parse(text);
    if (n === 1) {
      if (o.format !== DUMP_FORMAT) throw new DumpError("not a kv:export file");
      if (o.version !== DUMP_VERSION) {
        throw new DumpError(`format version ${o.version}; this build reads ${DUMP_VERSION}`);
      }
      if (!Number.isSafeInteger(o.schema_version) || o.schema_version < 0) {
        throw new DumpError("the header's schema_version is not a version");
      }
      onHeader(o as DumpHeader);
    } else if (o.end === true) {
      if (o.entries !== entries || o.sha256 !== hash.digest("hex")) {
        throw new DumpError(
          `the trailer does not match the lines before it (${entries} entries): the file was altered or damaged`,
        );
      }
      ended = true;
      continue;
    } else {
      let key: Deno.KvKey, value: unknown;
      try {
        if (!("k" in o) || !("v" in o)) throw new Error("not an entry");
        key = decodeKey(o.k);
        value = decodeValue(o.v);
      } catch (e) {
        throw new DumpError(`line ${n}: ${(e as Error).message}`);
      }
      if (key.length === 0 || keyBytes(key) > MAX_KEY_BYTES) {
        throw new DumpError(`line ${n}: not a key KV can store`);
      }
      entries++;
      yield { n, key, value, text };
    }
    hash.update(text + "\n");
  }
  if (n === 0) throw new DumpError("the file is empty");
  if (!ended) throw new DumpError(`no trailer after line ${n}: the file is cut short`);
}

/**
 * Checks a whole dump (header, every entry's encoding, the trailer's count and checksum) without
 * writing anything; returns its header.
 */
export async function verifyDump(path: string): Promise<DumpHeader & { entries: number }> {
  let header: DumpHeader | null = null;
  let entries = 0;
  // A value whose size bound passes KV's limit is tried on an in-memory KV, under a check that
  // fails: KV sizes the value exactly and stores nothing.
  let probe: Deno.Kv | null = null;
  try {
    for await (const { n, key, value } of readDump(path, (h) => header = h)) {
      entries++;
      if (serializedBound(value) <= MAX_VALUE_BYTES) continue;
      probe ??= await Deno.openKv(":memory:");
      try {
        await probe.atomic().check({ key, versionstamp: "00000000000000010000" }).set(key, value)
          .commit();
      } catch (e) {
        throw new DumpError(`line ${n}: a value KV cannot store (${(e as Error).message})`);
      }
    }
  } finally {
    probe?.close();
  }
  return { ...header!, entries };
}

/**
 * Imports a dump into `kv`: refused unless `kv` is empty or `force` (entries of the same key are
 * then replaced, others kept), and unless the whole file verifies first. Entries are written in
 * atomics as full as KV's limits allow. Returns the header and the count written.
 */
export async function importDump(
  kv: Deno.Kv,
  path: string,
  opts: { force?: boolean; maxSchemaVersion: number },
): Promise<DumpHeader & { entries: number }> {
  const header = await verifyDump(path);
  if (header.schema_version > opts.maxSchemaVersion) {
    throw new DumpError(
      `the file's schema version ${header.schema_version} is newer than this build's ${opts.maxSchemaVersion}`,
    );
  }
  let empty = true;
  for await (const _ of kv.list({ prefix: [] }, { limit: 1 })) empty = false;
  if (!empty && !opts.force) {
    throw new DumpError("the target KV is not empty (--force writes over it)");
  }
  // Written over, the KV keeps the older of its schema and the file's: the migrations run after
  // (idempotent) then reach the entries of both, not only those of the newer.
  const kvVersion = empty ? header.schema_version : await schemaVersion(kv);
  if (kvVersion > opts.maxSchemaVersion) {
    throw new DumpError(
      `the target KV's schema version ${kvVersion} is newer than this build's ${opts.maxSchemaVersion}`,
    );
  }
  const version = Math.min(kvVersion, header.schema_version);
  let atomic = kv.atomic();
  let room = new AtomicRoom(), mutations = 1, carried = 0, first = 1, written = 0;
  // The version goes in the first atomic, before any entry it must cover.
  const versionBytes = keyBytes(SCHEMA_VERSION_KEY);
  room.take({ checks: 0, mutations: 1, keyBytes: versionBytes, bytes: versionBytes + 16 });
  if (version > 0) atomic.set(SCHEMA_VERSION_KEY, version);
  else atomic.delete(SCHEMA_VERSION_KEY);
  const commit = async (last: number) => {
    if (mutations === 0) return;
    try {
      await commitRetrying(atomic);
    } catch (e) {
      throw new DumpError(
        `lines ${first} to ${last} could not be written (${
          (e as Error).message
        }); the KV holds the ${written} entries before them`,
      );
    }
    written += carried;
    atomic = kv.atomic();
    room = new AtomicRoom();
    mutations = carried = 0;
  };
  let last = 0;
  try {
    for await (const { n, key, value } of readDump(path, () => {})) {
      if (carried === 0) first = n;
      last = n;
      // The file's version is the header's, written above; an ephemeral entry (none is exported)
      // could be a migration lock, which would hold the migrations below.
      if (key.length === SCHEMA_VERSION_KEY.length && startsWith(key, SCHEMA_VERSION_KEY)) {
        carried++;
        continue;
      }
      if (ephemeral(key)) continue;
      const kb = keyBytes(key);
      const f = { checks: 0, mutations: 1, keyBytes: kb, bytes: kb + serializedBound(value) };
      if (!room.fits(f)) {
        await commit(n - 1);
        first = n;
      }
      atomic.set(key, value);
      mutations++;
      carried++;
      room.take(f);
    }
  } catch (e) {
    // It verified a moment ago: the file changed meanwhile.
    if (e instanceof DumpError && written > 0) {
      throw new DumpError(`${e.message}; the KV holds the ${written} entries written before`);
    }
    throw e;
  }
  await commit(last);
  return { ...header, entries: written };
}
