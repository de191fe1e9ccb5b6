/**
 * Where a customer's webhook may be delivered: the addresses its host resolves to, each checked
 * against the private, loopback and link-local ranges (IPv4 and IPv6, IPv4 embedded in IPv6
 * too). The delivery connects to an address checked here, never to a name resolved again, so a
 * host that answers DNS differently the second time (DNS rebinding) reaches nothing it may not.
 */
import { canonicalIp, canonicalProxy, trustedProxies } from "../net.ts";

const LOOPBACK = trustedProxies(["127.0.0.0/8", "::1/128"].map((r) => canonicalProxy(r)!));

// Every range that is not the public internet: private, shared (CGNAT), link-local (cloud
// metadata at 169.254.169.254), multicast, reserved and documentation ranges, and the IPv6 forms
// that carry an IPv4 address (compatible, translated, NAT64, 6to4, Teredo) whatever it is.
const NOT_PUBLIC = trustedProxies(
  [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",
    "::/96",
    "::ffff:0:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
  ].map((r) => canonicalProxy(r)!),
);

/** Which addresses webhooks may reach: public ones always; loopback and the rest as allowed. */
export interface AddressPolicy {
  /** WEBHOOK_ALLOW_PRIVATE_URLS: every address, private and loopback included. */
  allowPrivate: boolean;
  /** Development billing: loopback too (a receiver on this machine). */
  allowLoopback: boolean;
}

/** The policy of a configuration. */
export function addressPolicy(
  config: { billingMode: "development" | "production"; webhookAllowPrivateUrls: boolean },
): AddressPolicy {
  return {
    allowPrivate: config.webhookAllowPrivateUrls,
    allowLoopback: config.webhookAllowPrivateUrls || config.billingMode === "development",
  };
}

/**
 * Whether the policy lets a delivery reach `ip` (any textual form; not an address: false).
 *
 * @example
 * ```ts
 * const prod = { allowPrivate: false, allowLoopback: false };
 * addressAllowed("93.184.216.34", prod); // true
 * addressAllowed("::ffff:169.254.169.254", prod); // false
 * addressAllowed("127.0.0.1", { allowPrivate: false, allowLoopback: true }); // true
 * ```
 */
export function addressAllowed(ip: string, policy: AddressPolicy): boolean {
  const canonical = canonicalIp(ip);
  if (canonical === null) return false;
  if (policy.allowPrivate) return true;
  if (LOOPBACK.has(canonical)) return policy.allowLoopback;
  return !NOT_PUBLIC.has(canonical);
}

/** Resolves a host name to its addresses (A and AAAA); throws when it has none. */
export type Resolver = (host: string, signal: AbortSignal) => Promise<string[]>;

/** The system's DNS. */
export const resolveDns: Resolver = async (name, signal) => {
  const answers = await Promise.allSettled([
    Deno.resolveDns(name, "A", { signal }),
    Deno.resolveDns(name, "AAAA", { signal }),
  ]);
  const addresses = answers.flatMap((a) => a.status === "fulfilled" ? a.value : []);
  if (addresses.length === 0) throw new Error(`${name} has no address`);
  return addresses;
};

/** Where a URL may be delivered: the addresses to connect to, or why none may be. */
export type Destination =
  | { ok: true; addresses: string[] }
  | { ok: false; reason: "address_refused" | "unresolvable" };

/**
 * The addresses a webhook URL may be delivered to: its IP literal, or every address its host
 * resolves to, all of them allowed by the policy (one that is not refuses the host: a name
 * that also points inside is not trusted with the rest).
 */
export async function destination(
  url: URL,
  policy: AddressPolicy,
  resolve: Resolver,
  signal: AbortSignal,
): Promise<Destination> {
  const literal = canonicalIp(url.hostname);
  const name = url.hostname.toLowerCase().replace(/\.$/, "");
  let addresses: string[];
  if (literal !== null) addresses = [literal];
  // `localhost` and its subdomains are loopback, asking no one (RFC 6761).
  else if (name === "localhost" || name.endsWith(".localhost")) addresses = ["127.0.0.1", "::1"];
  else {
    try {
      addresses = await resolve(name, signal);
    } catch {
      return { ok: false, reason: "unresolvable" };
    }
    if (addresses.length === 0) return { ok: false, reason: "unresolvable" };
  }
  if (!addresses.every((a) => addressAllowed(a, policy))) {
    return { ok: false, reason: "address_refused" };
  }
  return { ok: true, addresses: addresses.map((a) => canonicalIp(a)!) };
}
