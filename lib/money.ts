/**
 * Money is integer nano-USD (`bigint`) end to end; decimal strings only at the edges.
 * 1 USD = 1_000_000_000 nano-USD.
 */
export const NANOS_PER_USD = 1_000_000_000n;

const DECIMAL = /^(-)?(\d{1,15})(?:\.(\d{1,9}))?$/;

/**
 * Parses a USD decimal string ("12.5", "-0.000150000") into nano-USD, or `null` if malformed.
 *
 * @example
 * ```ts
 * parseUsd("0.000150000"); // 150000n
 * parseUsd("1e3"); // null
 * ```
 */
export function parseUsd(text: string): bigint | null {
  const m = DECIMAL.exec(text.trim());
  if (!m) return null;
  const whole = BigInt(m[2]) * NANOS_PER_USD;
  const frac = BigInt((m[3] ?? "").padEnd(9, "0"));
  const value = whole + frac;
  return m[1] ? -value : value;
}

/**
 * Formats nano-USD as a USD decimal string without trailing fraction zeros: 12500000000n → "12.5".
 *
 * @example
 * ```ts
 * formatUsd(12_500_000_000n); // "12.5"
 * ```
 */
export function formatUsd(nanos: bigint): string {
  const negative = nanos < 0n;
  const abs = negative ? -nanos : nanos;
  const whole = abs / NANOS_PER_USD;
  const frac = (abs % NANOS_PER_USD).toString().padStart(9, "0").replace(/0+$/, "");
  return `${negative ? "-" : ""}${whole}${frac ? "." + frac : ""}`;
}

/** nano-USD as a JS number of USD, for the `usage.cost` fields that SDKs read as numbers. */
export function usdNumber(nanos: bigint): number {
  return Number(formatUsd(nanos));
}

/**
 * Integer division rounding half away from zero.
 *
 * @example
 * ```ts
 * divRound(5n, 2n); // 3n
 * divRound(-5n, 2n); // -3n
 * ```
 */
export function divRound(n: bigint, d: bigint): bigint {
  const q = n / d;
  const r = n % d;
  if (r === 0n) return q;
  const twice = (r < 0n ? -r : r) * 2n;
  if (twice >= (d < 0n ? -d : d)) return q + ((n < 0n) !== (d < 0n) ? -1n : 1n);
  return q;
}

/**
 * Savings as a percent number with two decimals (20 means 20 %), 0 when nothing was spent.
 *
 * @example
 * ```ts
 * savingsPercent(80n, 100n); // 20
 * ```
 */
export function savingsPercent(cost: bigint, market: bigint): number {
  if (market <= 0n) return 0;
  return Number(divRound((market - cost) * 10000n, market)) / 100;
}
