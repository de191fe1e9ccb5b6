/** Gemini's counting rules: its tokenizer is not public; its image rule is. */
import type { PromptCounting } from "../types.ts";

/**
 * 258 tokens an image up to 384 px on both sides; a larger one 258 a tile, its tiles as large as
 * two thirds of its short side (256 to 768 px). Gemini 3 counts 1120 an image at its default
 * (high) media resolution. Images are counted at most as a 6 × 6-tile one.
 */
const TILE = 258;
const IMAGE_WORST = 36 * TILE;

export const geminiCounting: PromptCounting = {
  imageTokens(catalogId, size) {
    if (!size) return IMAGE_WORST;
    const { width: w, height: h } = size;
    let n = TILE;
    if (w > 384 || h > 384) {
      const unit = Math.min(768, Math.max(256, Math.floor(Math.min(w, h) / 1.5)));
      n = TILE * Math.ceil(w / unit) * Math.ceil(h / unit);
    }
    if (/^gemini-3/.test(catalogId)) n = Math.max(n, 1120);
    return Math.min(n, IMAGE_WORST);
  },
  worstImageTokens: () => IMAGE_WORST,
};
