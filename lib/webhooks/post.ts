/**
 * One webhook POST over a connection to an address checked beforehand (lib/webhooks/addresses.ts):
 * the TCP connection goes to that address, while the Host header and, for https, the TLS server
 * name and certificate check use the URL's host. `fetch` would resolve the name again itself (and
 * its TCP-socket proxy sends https in the clear), so this speaks HTTP/1.1 directly: the request
 * with `Connection: close`, then only the response's status line and headers, bounded.
 */

/** The most bytes of a response read: its status line and headers, never its body. */
export const MAX_RESPONSE_HEAD = 8192;

/** Why an attempt got no HTTP status. */
export type PostFailure = "timeout" | "connection_failed" | "tls_failed" | "invalid_response";

export class PostError extends Error {
  override name = "PostError";
  constructor(readonly code: PostFailure) {
    super(code);
  }
}

export interface PostOptions {
  /** The whole attempt's bound: connecting, sending and reading the status. */
  timeoutMs: number;
  /** Root certificates trusted beside the system's (tests). */
  caCerts?: string[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * POSTs `body` to `url` through one of `addresses` (tried in order until one connects) and
 * resolves with the response's status; throws `PostError` when there is none.
 */
export async function postTo(
  url: URL,
  addresses: string[],
  headers: Record<string, string>,
  body: Uint8Array,
  opts: PostOptions,
): Promise<number> {
  const ac = new AbortController();
  let timedOut = false;
  let conn: Deno.Conn | null = null;
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
    close(conn);
  }, opts.timeoutMs);
  try {
    const tcp = await connect(url, addresses, ac.signal);
    conn = tcp;
    if (url.protocol === "https:") {
      try {
        const tls = await Deno.startTls(tcp, {
          // An IPv6 literal without its brackets: the certificate names the address itself.
          hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
          caCerts: opts.caCerts,
          alpnProtocols: ["http/1.1"],
        });
        conn = tls;
        // Now, not at the first write: a certificate refused is told apart from a lost connection.
        await tls.handshake();
      } catch (e) {
        throw timedOut ? e : new PostError("tls_failed");
      }
    }
    const head = [
      `POST ${url.pathname}${url.search} HTTP/1.1`,
      `Host: ${url.host}`,
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      `Content-Length: ${body.length}`,
      "Connection: close",
      "",
      "",
    ].join("\r\n");
    await writeAll(conn, encoder.encode(head));
    await writeAll(conn, body);
    return await readStatus(conn);
  } catch (e) {
    if (timedOut) throw new PostError("timeout");
    if (e instanceof PostError) throw e;
    throw new PostError("connection_failed");
  } finally {
    clearTimeout(timer);
    close(conn);
  }
}

function close(conn: Deno.Conn | null) {
  try {
    conn?.close();
  } catch {
    // Closed already (by the timeout, or the peer's reset).
  }
}

async function connect(
  url: URL,
  addresses: string[],
  signal: AbortSignal,
): Promise<Deno.TcpConn> {
  const port = url.port ? Number(url.port) : url.protocol === "https:" ? 443 : 80;
  let last: unknown = null;
  for (const hostname of addresses) {
    try {
      return await Deno.connect({ hostname, port, signal });
    } catch (e) {
      last = e;
      if (signal.aborted) break;
    }
  }
  throw last ?? new PostError("connection_failed");
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array) {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/**
 * The status of the response on `conn`: read up to the end of its headers (skipping interim 1xx
 * responses), at most MAX_RESPONSE_HEAD bytes in all.
 */
async function readStatus(conn: Deno.Conn): Promise<number> {
  const buf = new Uint8Array(MAX_RESPONSE_HEAD);
  let filled = 0;
  let from = 0;
  for (;;) {
    const text = decoder.decode(buf.subarray(from, filled));
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const m = /^HTTP\/1\.[01] (\d{3})(?: |\r)/.exec(text);
      if (!m) throw new PostError("invalid_response");
      const status = Number(m[1]);
      if (status >= 200 || status === 101) return status;
      // An interim response (100 Continue, 103 Early Hints): the final one follows.
      from += encoder.encode(text.slice(0, end + 4)).length;
      continue;
    }
    if (filled === buf.length) throw new PostError("invalid_response");
    const n = await conn.read(buf.subarray(filled));
    if (n === null) throw new PostError("invalid_response");
    filled += n;
  }
}
