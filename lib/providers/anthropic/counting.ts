/** Anthropic's counting rules: its tokenizer is not public; images and tool prompts are. */
import type { PromptCounting } from "../types.ts";

/** An image: width × height / 750, the long edge scaled to 1568 px, about 1600 at most. */
const IMAGE_WORST = 1600;

export const anthropicCounting: PromptCounting = {
  imageTokens(_catalogId, size) {
    if (!size) return IMAGE_WORST;
    const scale = Math.min(1, 1568 / Math.max(size.width, size.height));
    return Math.min(
      IMAGE_WORST,
      Math.ceil((size.width * scale) * (size.height * scale) / 750),
    );
  },
  worstImageTokens: () => IMAGE_WORST,
  // The tool use system prompt (up to 346 tokens) and, for each of Anthropic's own tools
  // (`bash_…`, `computer_…`, `text_editor_…`, server tools), a definition of up to about 700
  // tokens and its system prompt.
  toolPrompt: { system: 500, perBuiltin: 1_250 },
};
