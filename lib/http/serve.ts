/**
 * The HTTP server with the connection limits `Deno.serve` lacks. Deno's server (hyper) waits
 * forever for a request's headers, for the next request on a kept-alive connection, and for the
 * rest of a body it answered without reading; it has no option for any of these. So connections
 * are accepted here, one at a time, and each is served by the runtime's own HTTP code
 * (`serveHttpOnConnection`, what `Deno.serve` runs per listener) with its own abort signal:
 *
 * - a new connection whose first request's headers have not all come within `headerTimeoutMs`,
 *   or a kept-alive one that has no request under way for `idleTimeoutMs`, is closed;
 * - an answer carrying `Connection: close` (a body that failed or was left unread,
 *   `lib/http/limits.ts`) closes its connection shortly after it was handed over (`LINGER_MS`),
 *   bytes still to come or not;
 * - a client (an IPv4 address or IPv6 /64, as the sign-in limit counts) may hold at most
 *   `maxConnectionsPerClient` connections; more are closed as they are accepted. Trusted
 *   proxies are not capped: every client behind them shares their addresses.
 *
 * The bytes never pass through JavaScript: only the accept and one abort signal per connection.
 */
import type { Logger } from "../log.ts";
import { canonicalIp, signinClient, type TrustedProxies } from "../net.ts";

export interface ConnectionLimits {
  /** From accepting a connection to its first request's last header byte (HEADER_TIMEOUT_MS). */
  headerTimeoutMs: number;
  /** From a connection's last answer to its next request's last header byte (IDLE_TIMEOUT_MS). */
  idleTimeoutMs: number;
  /** Connections open at once per client (MAX_CONNECTIONS_PER_CLIENT); 0: no cap. */
  maxConnectionsPerClient: number;
  /** Addresses the cap does not apply to (TRUSTED_PROXIES). */
  uncapped: TrustedProxies;
}

interface ConnectionServer {
  finished: Promise<void>;
  shutdown(): Promise<void>;
}

type ServeOnConnection = (
  conn: Deno.Conn,
  signal: AbortSignal,
  handler: Deno.ServeHandler,
  onError: (error: unknown) => Response,
  onListen: () => void,
) => ConnectionServer;

/** The runtime's per-connection server, or null on a runtime that does not expose it. */
function serveOnConnection(): ServeOnConnection | null {
  const deno = Deno as unknown as { internal?: symbol } & Record<symbol, unknown>;
  const internal = deno.internal
    ? deno[deno.internal] as { serveHttpOnConnection?: unknown } | undefined
    : undefined;
  const serve = internal?.serveHttpOnConnection;
  return typeof serve === "function" ? serve as ServeOnConnection : null;
}

/**
 * How long a connection whose answer said `Connection: close` stays open after the answer was
 * handed over. `completed` settles before the bytes are written: dropped at once, the connection
 * loses them while a body read is pending (a turn of the event loop later they were out in every
 * run here; a second leaves room for a larger answer). A client that reads the answer closes first.
 */
const LINGER_MS = 1000;

/** How often a burst of refused connections is logged, at most. */
const REFUSED_LOG_EVERY_MS = 60_000;

/** One served connection: its timer, its requests under way, and the signal that drops it. */
class Connection {
  readonly served: ConnectionServer;
  /** Settles once the connection has ended, however it ended. */
  readonly closed: Promise<void>;
  readonly #drop = new AbortController();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #inFlight = 0;
  #closeWhenDone = false;

  constructor(
    conn: Deno.Conn,
    serve: ServeOnConnection,
    handler: Deno.ServeHandler,
    readonly limits: ConnectionLimits,
    onError: (error: unknown) => Response,
  ) {
    this.#wait(limits.headerTimeoutMs);
    this.served = serve(
      conn,
      this.#drop.signal,
      (req, info) => this.#serve(req, info, handler),
      onError,
      () => {},
    );
    // A reset connection rejects `finished`: the end of the connection all the same.
    this.closed = this.served.finished.catch(() => {}).then(() => clearTimeout(this.#timer));
  }

  /** Drops the connection unless a request arrives within `ms`. */
  #wait(ms: number) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#drop.abort(), ms);
  }

  async #serve(req: Request, info: Deno.ServeHandlerInfo, handler: Deno.ServeHandler) {
    clearTimeout(this.#timer);
    this.#inFlight++;
    let res: Response;
    try {
      res = await handler(req, info);
    } catch (e) {
      this.#done();
      throw e;
    }
    if (res.headers.get("connection")?.toLowerCase() === "close") this.#closeWhenDone = true;
    // Handed over (a streamed body: sent) or failed: the connection is idle or done either way.
    info.completed.then(() => this.#done(), () => this.#done());
    return res;
  }

  #done() {
    if (--this.#inFlight > 0) return;
    this.#wait(this.#closeWhenDone ? LINGER_MS : this.limits.idleTimeoutMs);
  }
}

/**
 * Serves `handler` on `hostname:port` under `limits` (see the module's comment). Where the
 * runtime does not expose its per-connection server it falls back to `Deno.serve`, without the
 * connection limits, and says so in a warning.
 */
export function serveWithLimits(
  options: { hostname: string; port: number; onListen?: (addr: Deno.NetAddr) => void },
  limits: ConnectionLimits,
  handler: Deno.ServeHandler,
  log: Logger,
): Deno.HttpServer<Deno.NetAddr> {
  const serve = serveOnConnection();
  if (!serve) {
    log(
      "warn",
      "this Deno does not serve single connections: no header or idle timeouts, no connection cap",
    );
    return Deno.serve({ ...options, onListen: options.onListen ?? (() => {}) }, handler);
  }
  const onError = (error: unknown) => {
    log("error", "request failed outside the router", {
      error: error instanceof Error ? error.name : "unknown",
    });
    return Response.json(
      { error: { message: "Internal error", type: "api_error", code: "internal_error" } },
      { status: 500 },
    );
  };
  const listener = Deno.listen({ hostname: options.hostname, port: options.port });
  const open = new Set<Connection>();
  const perClient = new Map<string, number>();
  let refused = 0;
  let refusedLoggedAt = -Infinity;

  const admit = (conn: Deno.Conn): string | null | false => {
    const addr = conn.remoteAddr as Deno.NetAddr;
    const cap = limits.maxConnectionsPerClient;
    const ip = canonicalIp(addr.hostname);
    if (cap === 0 || ip === null || limits.uncapped.has(ip)) return null;
    const client = signinClient(ip);
    const n = perClient.get(client) ?? 0;
    if (n >= cap) {
      refused++;
      if (Date.now() - refusedLoggedAt >= REFUSED_LOG_EVERY_MS) {
        log("warn", "connections refused: over MAX_CONNECTIONS_PER_CLIENT", { client, refused });
        refusedLoggedAt = Date.now();
        refused = 0;
      }
      return false;
    }
    perClient.set(client, n + 1);
    return client;
  };

  const accepting = (async () => {
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) return;
        // Out of file descriptors or the like: the listener itself is fine, try again shortly.
        log("warn", "accepting a connection failed", { error: (e as Error).name });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const client = admit(conn);
      if (client === false) {
        conn.close();
        continue;
      }
      const c = new Connection(conn, serve, handler, limits, onError);
      open.add(c);
      c.closed.then(() => {
        open.delete(c);
        if (client === null) return;
        const n = perClient.get(client)! - 1;
        if (n > 0) perClient.set(client, n);
        else perClient.delete(client);
      });
    }
  })();

  const addr = listener.addr as Deno.NetAddr;
  options.onListen?.(addr);
  let closing: Promise<void> | undefined;
  const finished = (async () => {
    await accepting;
    while (open.size) await Promise.all([...open].map((c) => c.closed));
  })();
  return {
    addr,
    finished,
    // Graceful: no new connections; idle ones close now, busy ones after their answer.
    shutdown() {
      closing ??= (async () => {
        try {
          listener.close();
        } catch {
          // Already closed.
        }
        await accepting;
        await Promise.all([...open].map((c) => c.served.shutdown().catch(() => {})));
        await finished;
      })();
      return closing;
    },
    ref: () => listener.ref(),
    unref: () => listener.unref(),
    [Symbol.asyncDispose]() {
      return this.shutdown();
    },
  };
}
