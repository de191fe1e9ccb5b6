/**
 * The client's address behind trusted reverse proxies. The socket address is the client's unless
 * it is one of `TRUSTED_PROXIES`; then the client is the right-most `X-Forwarded-For` entry that
 * is not itself a trusted proxy. Entries left of it were written by whoever sent the request, so a
 * client cannot choose its own address, and without a trusted proxy the header is not read at all.
 */

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
const MAPPED_V4 = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/;

function ipv4(s: string): string | null {
  const m = IPV4.exec(s);
  if (!m) return null;
  const parts = m.slice(1);
  // No leading zeros: some parsers read "010" as octal, so such a form names no one address.
  if (parts.some((p) => (p.length > 1 && p[0] === "0") || Number(p) > 255)) return null;
  return parts.join(".");
}

/**
 * One IP address in its canonical form (IPv6 compressed and lower-case, an IPv4-mapped IPv6
 * address as plain IPv4), or null when `s` is not an IP address. Brackets around IPv6 are allowed.
 *
 * @example
 * ```ts
 * canonicalIp("[2001:DB8:0::1]"); // "2001:db8::1"
 * canonicalIp("::ffff:10.0.0.1"); // "10.0.0.1"
 * canonicalIp("10.0.0.0/8"); // null
 * ```
 */
export function canonicalIp(s: string): string | null {
  let v = s.trim();
  if (v.startsWith("[") && v.endsWith("]")) v = v.slice(1, -1);
  const four = ipv4(v);
  if (four !== null) return four;
  if (!v.includes(":") || !/^[0-9a-fA-F:.]+$/.test(v)) return null;
  let host: string;
  try {
    // The URL parser implements the IPv6 grammar and its canonical serialization.
    host = new URL(`http://[${v}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
  const mapped = MAPPED_V4.exec(host);
  if (mapped) {
    const hi = parseInt(mapped[1], 16);
    const lo = parseInt(mapped[2], 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return host;
}

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
 * `X-Forwarded-For` header, or null). `trusted` holds canonical addresses (`canonicalIp`).
 *
 * @example
 * ```ts
 * const proxies = new Set(["10.0.0.2"]);
 * clientAddress("10.0.0.2", "6.6.6.6, 203.0.113.7", proxies); // "203.0.113.7"
 * clientAddress("198.51.100.4", "203.0.113.7", proxies); // "198.51.100.4"
 * ```
 */
export function clientAddress(
  socketIp: string,
  forwardedFor: string | null,
  trusted: ReadonlySet<string>,
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
  trustedProxies: readonly string[],
): Deno.ServeHandler {
  if (trustedProxies.length === 0) return handler;
  const trusted = new Set(trustedProxies);
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
