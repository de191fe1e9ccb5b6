/** Number formatting for people; pure, so islands use it too. Money stays exact until display. */
import { divRound, parseUsd } from "../money.ts";

const CENT = 10_000_000n;
const thousands = (n: bigint) => n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");

/**
 * A USD decimal string for people: "$1,234.56"; amounts under a cent keep their digits
 * ("$0.000192") so small requests never show as zero.
 */
export function formatMoney(usd: string): string {
  const n = parseUsd(usd);
  if (n === null) return usd;
  const neg = n < 0n;
  const abs = neg ? -n : n;
  let body: string;
  if (abs === 0n || abs >= CENT) {
    const cents = divRound(abs, CENT);
    body = `${thousands(cents / 100n)}.${(cents % 100n).toString().padStart(2, "0")}`;
  } else {
    body = `0.${abs.toString().padStart(9, "0").replace(/0+$/, "")}`;
  }
  return `${neg ? "−" : ""}$${body}`;
}

/** A count with thousands separators. */
export function formatCount(n: number): string {
  return thousands(BigInt(Math.trunc(n)));
}

/** A percent number (20 means 20 %), up to two decimals. */
export function formatPercent(p: number): string {
  return `${Number(p.toFixed(2))}%`;
}

/** An ISO time as "2026-11-26 13:05 UTC". */
export function formatTime(iso: string | null): string {
  if (!iso) return "—";
  return iso.slice(0, 16).replace("T", " ") + " UTC";
}
