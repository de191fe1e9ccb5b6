/**
 * The client's address behind trusted reverse proxies. The socket address is the client's unless
 * it is one of `TRUSTED_PROXIES` (addresses or CIDR ranges); then the client is the right-most
 * `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of it were written by
 * whoever sent the request, so a client cannot choose its own address, and without a trusted proxy
 * the header is not read at all.
 */
import { canonicalIp, type TrustedProxies, trustedProxies } from "../net.ts";

/** An `X-Forwarded-For` entry's address: some proxies append the port ("1.2.3.4:80", "[::1]:80"). */
function forwardedIp(entry: string): string | null {
  const v = entry.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(v);
  if (bracketed) return canonicalIp(bracketed[1]);
  const withPort = /^([\d.]+):\d+$/.exec(v);
  return canonicalIp(withPort ? withPort[1] : v);
}

/**
 * The client's address of a request that came from `socketIp` carrying `forwardedFor` (the
 * `X-Forwarded-For` header, or null). `trusted` answers for canonical addresses (`canonicalIp`).
 *
 * @example
 * ```ts
 * const proxies = trustedProxies(["10.0.0.2"]);
 * clientAddress("10.0.0.2", "6.6.6.6, 203.0.113.7", proxies); // "203.0.113.7"
 * clientAddress("198.51.100.4", "203.0.113.7", proxies); // "198.51.100.4"
 * ```
 */
export function clientAddress(
  socketIp: string,
  forwardedFor: string | null,
  trusted: TrustedProxies,
): string {
  const socket = canonicalIp(socketIp);
  if (socket === null || !trusted.has(socket) || !forwardedFor) return socketIp;
  let client = socket;
  const hops = forwardedFor.split(",");
  for (let i = hops.length - 1; i >= 0; i--) {
    const ip = forwardedIp(hops[i]);
    // A malformed entry is no address: the client is the last hop that was one.
    if (ip === null) break;
    client = ip;
    if (!trusted.has(ip)) break;
  }
  return client;
}

/**
 * Wraps a server handler so the handler sees the client's address (`clientAddress`) as the
 * request's remote address: everything that reads it (the sign-in limit, the audit row's
 * `client_ip`) gets the same answer. Without trusted proxies the handler is returned unchanged.
 */
export function trustingProxies(
  handler: Deno.ServeHandler,
  proxies: readonly string[],
): Deno.ServeHandler {
  if (proxies.length === 0) return handler;
  const trusted = trustedProxies(proxies);
  return (req, info) => {
    const addr = info.remoteAddr;
    if (addr.transport !== "tcp" && addr.transport !== "udp") return handler(req, info);
    const ip = clientAddress(addr.hostname, req.headers.get("x-forwarded-for"), trusted);
    if (ip === addr.hostname) return handler(req, info);
    // The server's info object keeps its fields on its prototype: a spread would drop them.
    const resolved: Deno.ServeHandlerInfo = {
      remoteAddr: { transport: addr.transport, hostname: ip, port: addr.port },
      get completed() {
        return info.completed;
      },
    };
    return handler(req, resolved);
  };
}
