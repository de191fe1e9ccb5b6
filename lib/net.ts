/** IP addresses and CIDR ranges: canonical forms, and membership of a list of them. */

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

/**
 * Whom the sign-in limit counts for an address: an IPv4 address (also IPv4-mapped IPv6) by
 * itself, an IPv6 address by its /64, the least one customer is given, inside which it can take
 * any address it likes. Anything that is not an address is counted as it is.
 *
 * @example
 * ```ts
 * signinClient("2001:db8:1:2:aaaa::1"); // "2001:db8:1:2::/64"
 * signinClient("::ffff:10.0.0.1"); // "10.0.0.1"
 * ```
 */
export function signinClient(ip: string): string {
  const canonical = canonicalIp(ip);
  if (canonical === null) return ip;
  return canonical.includes(":") ? canonicalProxy(`${canonical}/64`)! : canonical;
}

/** The bytes of a canonical address (`canonicalIp`): 4 for IPv4, 16 for IPv6. */
function ipBytes(ip: string): number[] {
  if (!ip.includes(":")) return ip.split(".").map(Number);
  // Canonical IPv6 is hex groups with at most one "::".
  const [head, tail] = ip.includes("::") ? ip.split("::") : [ip, null];
  const groups = (g: string) => g ? g.split(":").map((h) => parseInt(h, 16)) : [];
  const hi = groups(head);
  const lo = tail === null ? [] : groups(tail);
  const all = [...hi, ...Array(8 - hi.length - lo.length).fill(0), ...lo];
  return all.flatMap((g) => [g >> 8, g & 255]);
}

/** A network: its address bytes with the host bits cleared, and its prefix length. */
interface Range {
  bytes: number[];
  bits: number;
}

function masked(bytes: number[], bits: number): number[] {
  return bytes.map((b, i) => {
    const keep = Math.max(0, Math.min(8, bits - 8 * i));
    return b & (0xff << (8 - keep)) & 0xff;
  });
}

/**
 * A trusted proxy in canonical form: an address (`canonicalIp`) or a CIDR range written as its
 * network and prefix length, host bits cleared ("10.1.2.3/8" is "10.0.0.0/8"); null when `s` is
 * neither. An IPv4-mapped IPv6 range of at least /96 is the IPv4 range it maps.
 *
 * @example
 * ```ts
 * canonicalProxy("10.0.0.2"); // "10.0.0.2"
 * canonicalProxy("2001:DB8::/32"); // "2001:db8::/32"
 * canonicalProxy("10.0.0.0/33"); // null
 * ```
 */
export function canonicalProxy(s: string): string | null {
  const v = s.trim();
  const slash = v.indexOf("/");
  if (slash < 0) return canonicalIp(v);
  const prefix = v.slice(slash + 1);
  const ip = canonicalIp(v.slice(0, slash));
  if (ip === null || !/^(0|[1-9]\d{0,2})$/.test(prefix)) return null;
  let bits = Number(prefix);
  const mapped = !ip.includes(":") && v.slice(0, slash).includes(":");
  if (mapped) {
    if (bits < 96) return null;
    bits -= 96;
  }
  const bytes = ipBytes(ip);
  if (bits > bytes.length * 8) return null;
  const network = masked(bytes, bits);
  const text = bytes.length === 4 ? network.join(".") : canonicalIp(
    Array.from({ length: 8 }, (_, i) => ((network[2 * i] << 8) | network[2 * i + 1]).toString(16))
      .join(":"),
  );
  return `${text}/${bits}`;
}

/** Whether an address is a trusted proxy. */
export interface TrustedProxies {
  has(ip: string): boolean;
}

/**
 * The trusted proxies of a canonical list (`canonicalProxy`): addresses are looked up exactly,
 * ranges by their prefix, each family against its own.
 */
export function trustedProxies(list: readonly string[]): TrustedProxies {
  const exact = new Set<string>();
  const ranges: Range[] = [];
  for (const entry of list) {
    const slash = entry.indexOf("/");
    if (slash < 0) {
      exact.add(entry);
      continue;
    }
    ranges.push({ bytes: ipBytes(entry.slice(0, slash)), bits: Number(entry.slice(slash + 1)) });
  }
  return {
    has(ip) {
      if (exact.has(ip)) return true;
      if (ranges.length === 0) return false;
      const bytes = ipBytes(ip);
      return ranges.some((r) =>
        r.bytes.length === bytes.length &&
        masked(bytes, r.bits).every((b, i) => b === r.bytes[i])
      );
    },
  };
}
