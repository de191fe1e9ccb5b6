/**
 * What an image in a prompt costs in tokens, by its provider's documented rules (the adapter's
 * `counting`), for a prompt the router counts itself (a reply whose usage never came) and for the
 * hold's allowance per image.
 * Dimensions are read from the header of base64 image data (PNG, JPEG, GIF, WebP); an image given
 * by URL or file id, or whose header cannot be read, costs the model's worst case.
 */
import type { ImageSize, ProviderAdapter } from "../providers/types.ts";

/** An image of a prompt: its data or URL, and OpenAI's `detail` if given. */
export interface ImageRef {
  /** A `data:` URL, a URL, or "" (a file id). */
  url: string;
  /** Base64 data given apart from its media type (Anthropic's `source.data`). */
  data?: string;
  detail?: string;
}

/** The model an image is counted for: its provider's counting rules and its catalog id. */
export interface ImageModel {
  adapter: Pick<ProviderAdapter, "counting">;
  catalogId: string;
}

/** The most tokens one image may cost on `model`: the hold's allowance per image. */
export const worstImageTokens = (model: ImageModel): number =>
  model.adapter.counting.worstImageTokens(model.catalogId);

/** The tokens `image` costs on `model` (never more than `worstImageTokens`). */
export const imageTokens = (model: ImageModel, image: ImageRef): number =>
  model.adapter.counting.imageTokens(model.catalogId, imageSize(image), image.detail);

/** Base64 characters decoded to find a header: a JPEG's frame header may follow 64 KB of EXIF. */
const HEADER_CHARS = 96 * 1024;

/** The pixel size of a base64 image (a `data:` URL or bare data), or null if unknown. */
export function imageSize(image: ImageRef): ImageSize | null {
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

function pngSize(b: Uint8Array): ImageSize | null {
  if (b.length < 24 || b[0] !== 0x89 || !ascii(b, 1, "PNG") || !ascii(b, 12, "IHDR")) return null;
  return { width: u32be(b, 16), height: u32be(b, 20) };
}

function gifSize(b: Uint8Array): ImageSize | null {
  if (b.length < 10 || !ascii(b, 0, "GIF8")) return null;
  return { width: u16le(b, 6), height: u16le(b, 8) };
}

function webpSize(b: Uint8Array): ImageSize | null {
  if (b.length < 30 || !ascii(b, 0, "RIFF") || !ascii(b, 8, "WEBP")) return null;
  if (ascii(b, 12, "VP8 ")) return { width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
  if (ascii(b, 12, "VP8L")) {
    const bits = b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24);
    return { width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
  }
  if (ascii(b, 12, "VP8X")) return { width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 };
  return null;
}

function jpegSize(b: Uint8Array): ImageSize | null {
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
