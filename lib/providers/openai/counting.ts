/**
 * OpenAI's counting rules: its public tokenizers by model family, and its image rules
 * ("Calculating costs" in its vision guide).
 */
import type { ImageSize, PromptCounting } from "../types.ts";

/** OpenAI model families and the tokenizer that counts them. */
const ENCODINGS: [RegExp, "o200k_base" | "cl100k_base"][] = [
  [
    /^(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-6|gpt-oss|gpt-realtime|gpt-audio|o\d|codex|computer-use)/,
    "o200k_base",
  ],
  [/^(gpt-4|gpt-3\.5|text-embedding-3|text-embedding-ada)/, "cl100k_base"],
];

/** The tile rule: base tokens, plus tile tokens per 512-px tile of the scaled image. */
const tiles = (base: number, tile: number) => ({ kind: "tiles" as const, base, tile });
/** The patch rule: 32-px patches (at most 1536) times a per-model multiplier. */
const patches = (multiplier: number) => ({ kind: "patches" as const, multiplier });
type ImageRule = ReturnType<typeof tiles> | ReturnType<typeof patches>;

/** The image rules by model family. */
const IMAGE_RULES: [RegExp, ImageRule][] = [
  [/^gpt-4o-mini/, tiles(2833, 5667)],
  [/^(gpt-4\.1-mini|gpt-5-mini)/, patches(1.62)],
  [/^(gpt-4\.1-nano|gpt-5-nano)/, patches(2.46)],
  [/^o4-mini/, patches(1.72)],
  [/^(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5)/, tiles(85, 170)],
  [/^(o1|o3)(-|$)/, tiles(75, 150)],
  [/^gpt-5(-chat-latest|-\d{4}-\d{2}-\d{2})?$/, tiles(70, 140)],
  [/^computer-use/, tiles(65, 129)],
];
const MAX_TILES = 8; // a 768 × 2048 image after scaling
const MAX_PATCHES = 1536;

function ruleWorst(rule: ImageRule): number {
  return rule.kind === "tiles"
    ? rule.base + MAX_TILES * rule.tile
    : Math.ceil(MAX_PATCHES * rule.multiplier);
}
/** The dearest image of any rule: a model without a known rule is counted at it. */
const WORST = Math.max(...IMAGE_RULES.map(([, r]) => ruleWorst(r)));

const ruleOf = (catalogId: string) => IMAGE_RULES.find(([re]) => re.test(catalogId))?.[1];

function ruleTokens(rule: ImageRule, size: ImageSize | null, detail: string | undefined): number {
  if (rule.kind === "tiles" && detail === "low") return rule.base;
  if (!size) return ruleWorst(rule);
  let { width: w, height: h } = size;
  if (rule.kind === "patches") {
    const n = Math.ceil(w / 32) * Math.ceil(h / 32);
    return Math.ceil(Math.min(n, MAX_PATCHES) * rule.multiplier);
  }
  // Fit in 2048 × 2048, then bring the shorter side down to 768; never scaled up.
  const fit = Math.min(1, 2048 / Math.max(w, h));
  w *= fit;
  h *= fit;
  const short = Math.min(1, 768 / Math.min(w, h));
  w *= short;
  h *= short;
  const n = Math.min(MAX_TILES, Math.ceil(w / 512) * Math.ceil(h / 512));
  return rule.base + n * rule.tile;
}

/** OpenAI's rules; an OpenAI-compatible host's models match no family and count at the worst. */
export const openaiCounting: PromptCounting = {
  encoding: (catalogId) => ENCODINGS.find(([re]) => re.test(catalogId))?.[1],
  imageTokens(catalogId, size, detail) {
    const rule = ruleOf(catalogId);
    return rule ? ruleTokens(rule, size, detail) : WORST;
  },
  worstImageTokens(catalogId) {
    const rule = ruleOf(catalogId);
    return rule ? ruleWorst(rule) : WORST;
  },
};
