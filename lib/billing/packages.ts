import { z } from "zod";
import { ConfigError } from "../errors.ts";
import { parseUsd } from "../money.ts";

/** A credit package: what the customer pays and the credit it grants (bonus included). */
export interface CreditPackage {
  id: string;
  name: string;
  /** Price in nano-USD. */
  price: bigint;
  /** Credit granted in nano-USD. */
  credits: bigint;
}

const usd = (s: string) => parseUsd(s)!;

export const DEFAULT_PACKAGES: CreditPackage[] = [
  { id: "starter", name: "Starter", price: usd("10"), credits: usd("10") },
  { id: "team", name: "Team", price: usd("25"), credits: usd("25") },
  { id: "scale", name: "Scale", price: usd("100"), credits: usd("105") },
];

const money = z.string().refine((v) => {
  const n = parseUsd(v);
  return n !== null && n > 0n;
}, "must be a positive USD amount");
const schema = z.array(z.object({
  id: z.string().regex(/^[a-z0-9_-]{1,40}$/),
  name: z.string().min(1).max(80),
  price: money.refine((v) => usd(v) % 10_000_000n === 0n, "must be whole cents"),
  credits: money,
})).min(1).refine(
  (a) => new Set(a.map((p) => p.id)).size === a.length,
  "ids must be unique",
);

/** Packages from `CREDIT_PACKAGES` (a JSON array), or the default set. */
export function loadPackages(json: string | undefined): CreditPackage[] {
  if (!json) return DEFAULT_PACKAGES;
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    throw new ConfigError("CREDIT_PACKAGES: not valid JSON");
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new ConfigError(`CREDIT_PACKAGES: ${i.path.join(".")}: ${i.message}`);
  }
  return r.data.map((p) => ({
    id: p.id,
    name: p.name,
    price: usd(p.price),
    credits: usd(p.credits),
  }));
}
