/** Number formatting for people; pure, so islands use it too. Money stays exact until display. */
import { parseUsd } from "../money.ts";

const thousands = (n: bigint) => n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");

/**
 * A USD decimal string for people: "$1,234.50", "−$0.000192". Whole cents show two decimals;
 * finer amounts keep every digit, so a figure on a page is the API's figure exactly.
 *
 * @example
 * ```ts
 * formatMoney("1234.5"); // "$1,234.50"
 * formatMoney("-0.000192"); // "−$0.000192"
 * ```
 */
export function formatMoney(usd: string): string {
  const n = parseUsd(usd);
  if (n === null) return usd;
  const neg = n < 0n;
  const abs = neg ? -n : n;
  const frac = (abs % 1_000_000_000n).toString().padStart(9, "0").replace(/0+$/, "").padEnd(2, "0");
  return `${neg ? "−" : ""}$${thousands(abs / 1_000_000_000n)}.${frac}`;
}

/**
 * A count with thousands separators.
 *
 * @example
 * ```ts
 * formatCount(1234567); // "1,234,567"
 * ```
 */
export function formatCount(n: number): string {
  return thousands(BigInt(Math.trunc(n)));
}

/** A percent number (20 means 20 %), up to two decimals. */
export function formatPercent(p: number): string {
  return `${Number(p.toFixed(2))}%`;
}

/** A UTC month "2026-11" as "November 2026". */
export function formatMonth(month: string): string {
  return new Date(`${month}-01T00:00:00Z`).toLocaleString("en", {
    month: "long",
    year: "numeric",
    timeZone: "UTC",
  });
}

/**
 * An ISO time as "2026-11-26 13:05 UTC".
 *
 * @example
 * ```ts
 * formatTime("2026-11-26T13:05:09Z"); // "2026-11-26 13:05 UTC"
 * ```
 */
export function formatTime(iso: string | null): string {
  if (!iso) return "—";
  return iso.slice(0, 16).replace("T", " ") + " UTC";
}
