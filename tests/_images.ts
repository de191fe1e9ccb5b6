/** The headers of small images of a given size, as base64 (enough for a reader of dimensions). */

const b64 = (bytes: number[]) => btoa(String.fromCharCode(...bytes));
const be32 = (n: number) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
const be16 = (n: number) => [(n >> 8) & 255, n & 255];
const le16 = (n: number) => [n & 255, (n >> 8) & 255];
const le24 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255];
const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));

/** A PNG's signature and IHDR chunk. */
export const pngBase64 = (w: number, h: number) =>
  b64([
    0x89,
    ...ascii("PNG\r\n\x1a\n"),
    ...be32(13),
    ...ascii("IHDR"),
    ...be32(w),
    ...be32(h),
    8,
    6,
    0,
    0,
    0,
    ...be32(0),
  ]);

/** A JPEG's SOI, a JFIF APP0 segment and a baseline frame header (SOF0). */
export const jpegBase64 = (w: number, h: number) =>
  b64([
    0xff,
    0xd8,
    0xff,
    0xe0,
    ...be16(16),
    ...ascii("JFIF\0"),
    1,
    1,
    0,
    ...be16(1),
    ...be16(1),
    0,
    0,
    0xff,
    0xc0,
    ...be16(17),
    8,
    ...be16(h),
    ...be16(w),
    3,
    1,
    0x22,
    0,
    2,
    0x11,
    1,
    3,
    0x11,
    1,
  ]);

/** A GIF's header and logical screen descriptor. */
export const gifBase64 = (w: number, h: number) =>
  b64([...ascii("GIF89a"), ...le16(w), ...le16(h), 0, 0, 0]);

/** A WebP RIFF header with a VP8X chunk. */
export const webpBase64 = (w: number, h: number) =>
  b64([
    ...ascii("RIFF"),
    ...le24(22),
    0,
    ...ascii("WEBPVP8X"),
    ...le24(10),
    0,
    0,
    0,
    0,
    0,
    ...le24(w - 1),
    ...le24(h - 1),
  ]);
