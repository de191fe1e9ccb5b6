/**
 * What an image in a prompt costs in tokens, by each provider's documented rules, for a prompt the
 * router counts itself (a reply whose usage never came) and for the hold's allowance per image.
 * Dimensions are read from the header of base64 image data (PNG, JPEG, GIF, WebP); an image given
 * by URL or file id, or whose header cannot be read, costs the model's worst case.
 */
import type { ProviderAdapter } from "../providers/types.ts";

/** An image of a prompt: its data or URL, and OpenAI's `detail` if given. */
export interface ImageRef {
  /** A `data:` URL, a URL, or "" (a file id). */
  url: string;
  /** Base64 data given apart from its media type (Anthropic's `source.data`). */
  data?: string;
  detail?: string;
}

/** The model an image is counted for: its provider's wire format and its catalog id. */
export interface ImageModel {
  adapter: Pick<ProviderAdapter, "kind">;
  catalogId: string;
}

type Size = { width: number; height: number };

/** OpenAI's tile rule: base tokens, plus tile tokens per 512-px tile of the scaled image. */
const tiles = (base: number, tile: number) => ({ kind: "tiles" as const, base, tile });
/** OpenAI's patch rule: 32-px patches (at most 1536) times a per-model multiplier. */
const patches = (multiplier: number) => ({ kind: "patches" as const, multiplier });
type OpenAIRule = ReturnType<typeof tiles> | ReturnType<typeof patches>;

/** OpenAI's image rules by model family ("Calculating costs" in its vision guide). */
const OPENAI_RULES: [RegExp, OpenAIRule][] = [
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

function openAIRuleWorst(rule: OpenAIRule): number {
  return rule.kind === "tiles"
    ? rule.base + MAX_TILES * rule.tile
    : Math.ceil(MAX_PATCHES * rule.multiplier);
}
/** The dearest image of any OpenAI rule: a model without a known rule is counted at it. */
const OPENAI_WORST = Math.max(...OPENAI_RULES.map(([, r]) => openAIRuleWorst(r)));

function openAITokens(rule: OpenAIRule, size: Size | null, detail: string | undefined): number {
  if (rule.kind === "tiles" && detail === "low") return rule.base;
  if (!size) return openAIRuleWorst(rule);
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

/** Anthropic: width × height / 750, the long edge scaled to 1568 px, about 1600 at most. */
const ANTHROPIC_WORST = 1600;
function anthropicTokens(size: Size | null): number {
  if (!size) return ANTHROPIC_WORST;
  const scale = Math.min(1, 1568 / Math.max(size.width, size.height));
  return Math.min(
    ANTHROPIC_WORST,
    Math.ceil((size.width * scale) * (size.height * scale) / 750),
  );
}

/**
 * Gemini: 258 tokens an image up to 384 px on both sides; a larger one 258 a tile, its tiles as
 * large as two thirds of its short side (256 to 768 px). Gemini 3 counts 1120 an image at its
 * default (high) media resolution. Images are counted at most as a 6 × 6-tile one.
 */
const GEMINI_TILE = 258;
const GEMINI_WORST = 36 * GEMINI_TILE;
function geminiTokens(model: string, size: Size | null): number {
  if (!size) return GEMINI_WORST;
  const { width: w, height: h } = size;
  let n = GEMINI_TILE;
  if (w > 384 || h > 384) {
    const unit = Math.min(768, Math.max(256, Math.floor(Math.min(w, h) / 1.5)));
    n = GEMINI_TILE * Math.ceil(w / unit) * Math.ceil(h / unit);
  }
  if (/^gemini-3/.test(model)) n = Math.max(n, 1120);
  return Math.min(n, GEMINI_WORST);
}

/** The most tokens one image may cost on `model`: the hold's allowance per image. */
export function worstImageTokens(model: ImageModel): number {
  switch (model.adapter.kind) {
    case "anthropic":
      return ANTHROPIC_WORST;
    case "gemini":
      return GEMINI_WORST;
    default: {
      const rule = OPENAI_RULES.find(([re]) => re.test(model.catalogId))?.[1];
      return rule ? openAIRuleWorst(rule) : OPENAI_WORST;
    }
  }
}

/** The tokens `image` costs on `model` (never more than `worstImageTokens`). */
export function imageTokens(model: ImageModel, image: ImageRef): number {
  const size = imageSize(image);
  switch (model.adapter.kind) {
    case "anthropic":
      return anthropicTokens(size);
    case "gemini":
      return geminiTokens(model.catalogId, size);
    default: {
      const rule = OPENAI_RULES.find(([re]) => re.test(model.catalogId))?.[1];
      return rule ? openAITokens(rule, size, image.detail) : OPENAI_WORST;
    }
  }
}

/** Base64 characters decoded to find a header: a JPEG's frame header may follow 64 KB of EXIF. */
const HEADER_CHARS = 96 * 1024;

/** The pixel size of a base64 image (a `data:` URL or bare data), or null if unknown. */
export function imageSize(image: ImageRef): Size | null {
  let b64 = image.data;
  if (b64 === undefined) {
    const comma = image.url.indexOf(",");
    if (!image.url.startsWith("data:") || comma < 0) return null;
    if (!image.url.slice(0, comma).endsWith(";base64")) return null;
    b64 = image.url.slice(comma + 1, comma + 1 + HEADER_CHARS);
  } else b64 = b64.slice(0, HEADER_CHARS);
  let bytes: Uint8Array;
  try {
    const clean = b64.replace(/[^A-Za-z0-9+/]/g, "");
    const bin = atob(clean.slice(0, clean.length - (clean.length % 4)));
    bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
  } catch {
    return null;
  }
  const size = pngSize(bytes) ?? gifSize(bytes) ?? webpSize(bytes) ?? jpegSize(bytes);
  return size && size.width > 0 && size.height > 0 ? size : null;
}

const u16be = (b: Uint8Array, i: number) => (b[i] << 8) | b[i + 1];
const u16le = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8);
const u24le = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16);
const u32be = (b: Uint8Array, i: number) =>
  ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0;
const ascii = (b: Uint8Array, i: number, s: string) =>
  [...s].every((ch, k) => b[i + k] === ch.charCodeAt(0));

function pngSize(b: Uint8Array): Size | null {
  if (b.length < 24 || b[0] !== 0x89 || !ascii(b, 1, "PNG") || !ascii(b, 12, "IHDR")) return null;
  return { width: u32be(b, 16), height: u32be(b, 20) };
}

function gifSize(b: Uint8Array): Size | null {
  if (b.length < 10 || !ascii(b, 0, "GIF8")) return null;
  return { width: u16le(b, 6), height: u16le(b, 8) };
}

function webpSize(b: Uint8Array): Size | null {
  if (b.length < 30 || !ascii(b, 0, "RIFF") || !ascii(b, 8, "WEBP")) return null;
  if (ascii(b, 12, "VP8 ")) return { width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
  if (ascii(b, 12, "VP8L")) {
    const bits = b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24);
    return { width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
  }
  if (ascii(b, 12, "VP8X")) return { width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 };
  return null;
}

function jpegSize(b: Uint8Array): Size | null {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return null;
  let i = 2;
  while (i + 9 < b.length) {
    if (b[i] !== 0xff) return null;
    const marker = b[i + 1];
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    // Markers without a length: standalone (TEM, RST0-7).
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      i += 2;
      continue;
    }
    // A start of frame (SOF0-15 but DHT, JPG and DAC) holds the height, then the width.
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return { height: u16be(b, i + 5), width: u16be(b, i + 7) };
    }
    i += 2 + u16be(b, i + 2);
  }
  return null;
}
