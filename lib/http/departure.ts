/**
 * Noticing a client that left while its request waits before anything was answered (a retry's
 * backoff). Deno's HTTP/1.1 server aborts `Request.signal` then only when the whole request came
 * in its first read of the connection (about 1 KiB, head and body): for a longer request it does
 * not look at the connection again until the answer is being written. Linux lists every TCP
 * socket with its state in /proc/net/tcp and /proc/net/tcp6, where the server's end of a
 * connection its client closed shows CLOSE_WAIT, and one its client reset is gone.
 */

/** How often the socket tables are read while anyone waits. */
const POLL_MS = 200;
const TABLES = ["/proc/net/tcp", "/proc/net/tcp6"];
const ESTABLISHED = "01";
const CLOSE_WAIT = "08";
/** A socket table's row: its remote port and its state, in hex. */
const ROW = /^\s*\d+: [0-9A-F]+:[0-9A-F]{4} [0-9A-F]+:([0-9A-F]{4}) ([0-9A-F]{2})/gm;

interface Watcher {
  /** The client's port, as the tables print it. */
  port: string;
  /** Whether its connection was seen established: its absence means nothing before. */
  seen: boolean;
  /** Consecutive reads that did not list it. */
  missing: number;
  gone: AbortController;
}

const watchers = new Set<Watcher>();
/** The next read, when one is due. */
let timer: ReturnType<typeof setTimeout> | undefined;
/** Whether a read is under way (it schedules the next). */
let polling = false;
/** Whether the tables could be read (false once they could not: not Linux, or not allowed). */
let readable = true;

function schedule(ms: number) {
  if (timer === undefined && !polling && watchers.size) timer = setTimeout(run, ms);
}

function run() {
  timer = undefined;
  polling = true;
  poll().catch(() => {}).finally(() => {
    polling = false;
    schedule(POLL_MS);
  });
}

/** The states of the sockets whose remote port is one of `ports`, by that port. */
async function statesOf(ports: Set<string>): Promise<Map<string, string[]> | null> {
  const states = new Map<string, string[]>();
  let read = false;
  for (const table of TABLES) {
    let text: string;
    try {
      text = await Deno.readTextFile(table);
    } catch {
      continue; // no IPv6, say
    }
    read = true;
    for (const m of text.matchAll(ROW)) {
      if (!ports.has(m[1])) continue;
      const list = states.get(m[1]);
      if (list) list.push(m[2]);
      else states.set(m[1], [m[2]]);
    }
  }
  return read ? states : null;
}

async function poll() {
  const states = await statesOf(new Set([...watchers].map((w) => w.port)));
  if (!states) readable = false;
  for (const w of watchers) {
    if (!states) {
      watchers.delete(w);
      continue;
    }
    // Ports alone identify the row: another socket sharing the client's port keeps it "present"
    // (a departure missed, never one invented).
    const found = states.get(w.port) ?? [];
    if (found.includes(ESTABLISHED)) {
      w.seen = true;
      w.missing = 0;
      continue;
    }
    // A row can be skipped by a read that races the table's changes: a connection seen before
    // is taken for gone (reset) once two reads in a row did not list it.
    w.missing = found.length ? 0 : w.missing + 1;
    if (found.includes(CLOSE_WAIT) || (w.seen && w.missing >= 2)) {
      watchers.delete(w);
      w.gone.abort();
    }
  }
}

/**
 * A signal that aborts when the client of `info`'s connection is seen gone, watched until `until`
 * aborts; it never aborts where the socket tables cannot be read. Join it to `Request.signal`.
 *
 * @example
 * ```ts
 * const stop = new AbortController();
 * const signal = AbortSignal.any([req.signal, clientDeparture(info, stop.signal)]);
 * try {
 *   await pause(1000, signal);
 * } finally {
 *   stop.abort();
 * }
 * ```
 */
export function clientDeparture(
  info: Deno.ServeHandlerInfo | undefined,
  until: AbortSignal,
): AbortSignal {
  const gone = new AbortController();
  const addr = info?.remoteAddr;
  if (!readable || until.aborted || addr?.transport !== "tcp") return gone.signal;
  const w: Watcher = {
    port: addr.port.toString(16).toUpperCase().padStart(4, "0"),
    seen: false,
    missing: 0,
    gone,
  };
  watchers.add(w);
  until.addEventListener("abort", () => {
    watchers.delete(w);
    if (watchers.size || timer === undefined) return;
    clearTimeout(timer);
    timer = undefined;
  }, { once: true });
  // The first read at once: it sees the connection established, before the client may leave.
  schedule(0);
  return gone.signal;
}
