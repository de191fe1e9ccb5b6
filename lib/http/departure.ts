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
/** The read under way, if any (it schedules the next). */
let reading: Promise<void> | undefined;
/** Whether the tables could be read (false once they could not: not Linux, or not allowed). */
let readable = true;

function schedule() {
  if (timer === undefined && !reading && watchers.size) timer = setTimeout(run, POLL_MS);
}

function run() {
  timer = undefined;
  reading = poll().catch(() => {}).finally(() => {
    reading = undefined;
    schedule();
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

/** A watch on one client's connection (see `watchDeparture`). */
export interface DepartureWatch {
  /** Aborts once the client is seen gone. */
  signal: AbortSignal;
  /** Ends the watch; resolves once no read of the tables is under way for it. */
  stop(): Promise<void>;
}

/**
 * Watches the connection of `info`'s client for its departure, reading the socket tables every
 * `POLL_MS` (one read for every watch at once) until `stop`. Where the tables cannot be read, or
 * without a TCP client, the signal never aborts. Join it to `Request.signal`.
 *
 * @example
 * ```ts
 * const watch = watchDeparture(info);
 * try {
 *   await pause(1000, AbortSignal.any([req.signal, watch.signal]));
 * } finally {
 *   await watch.stop();
 * }
 * ```
 */
export function watchDeparture(info: Deno.ServeHandlerInfo | undefined): DepartureWatch {
  const gone = new AbortController();
  const addr = info?.remoteAddr;
  if (!readable || addr?.transport !== "tcp") {
    return { signal: gone.signal, stop: () => Promise.resolve() };
  }
  const w: Watcher = {
    port: addr.port.toString(16).toUpperCase().padStart(4, "0"),
    seen: false,
    missing: 0,
    gone,
  };
  watchers.add(w);
  schedule();
  return {
    signal: gone.signal,
    async stop() {
      watchers.delete(w);
      if (watchers.size === 0 && timer !== undefined) {
        clearTimeout(timer);
        timer = undefined;
      }
      // A read left running would outlive the wait that asked for it.
      await reading;
    },
  };
}
