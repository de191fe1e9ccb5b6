import { parseUsd } from "../money.ts";
import { badRequest } from "./errors.ts";
import { z } from "zod";

/** A USD amount as a decimal string ("12.5") or a JSON number, to exact nano-USD. */
export const usdAmount = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const text = typeof v === "number" ? String(v) : v;
  const n = /e/i.test(text) ? null : parseUsd(text);
  if (n === null) {
    ctx.addIssue({ code: "custom", message: "must be a USD amount with at most 9 decimals" });
    return z.NEVER;
  }
  return n;
});

/** Parses an ISO date ("2026-11-26") or time; throws 400 naming the parameter. */
export function parseTime(name: string, v: string): number {
  const ms = /^\d{4}-\d{2}-\d{2}$/.test(v) ? Date.parse(v + "T00:00:00Z") : Date.parse(v);
  if (!Number.isFinite(ms) || !/^\d{4}-\d{2}-\d{2}/.test(v)) {
    throw badRequest(`Invalid '${name}': must be an ISO date or time`);
  }
  return ms;
}

/** `limit` (default 100, at most 1000). */
export function parseLimit(v: string | undefined): number {
  if (v === undefined) return 100;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    throw badRequest("Invalid 'limit': must be a whole number from 1 to 1000");
  }
  return n;
}

/** A KV list cursor as given back by `next_cursor`. */
export function parseCursor(v: string | undefined): string | undefined {
  if (v === undefined || v === "") return undefined;
  if (!/^[A-Za-z0-9+/=_-]{1,2000}$/.test(v)) throw badRequest("Invalid 'cursor'");
  return v;
}
