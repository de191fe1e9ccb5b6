import assert from "node:assert/strict";
import { Tiktoken } from "js-tiktoken/lite";
import o200k from "js-tiktoken/ranks/o200k_base";
import cl100k from "js-tiktoken/ranks/cl100k_base";
import {
  type CountModel,
  countReplyOutput,
  countStreamedOutput,
  Prompt,
  tokenCounter,
} from "../../../lib/proxy/tokens.ts";
import { imageSize, imageTokens, worstImageTokens } from "../../../lib/proxy/images.ts";
import { encodingCounter, utf8Bytes } from "../../../lib/tokenizer.ts";
import { openai } from "../../../lib/providers/openai/mod.ts";
import { anthropic } from "../../../lib/providers/anthropic/mod.ts";
import { gemini } from "../../../lib/providers/gemini/mod.ts";
import { gifBase64, jpegBase64, pngBase64, webpBase64 } from "../../_images.ts";

const sse = (...events: unknown[]) => events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join("");

const model = (
  kind: "openai" | "anthropic" | "gemini",
  catalogId: string,
  contextWindow?: number,
) => ({ adapter: { openai, anthropic, gemini }[kind], catalogId, contextWindow }) as CountModel;
const MINI = model("openai", "gpt-4o-mini", 128_000);

/** Seeded text mixing scripts, digits, punctuation, whitespace and emoji. */
function samples(n: number): string[] {
  const chars = [
    ..."abcdefghij klmnopqrstuvwxyzABCDEF0123456789.,;:!?'\"-_()[]{}\n\t  ",
    ..."中文字符测试日本語のテキスト한국어ÀÉÎÕÜабвгдעבריתالعربية🙂🚀",
  ];
  let seed = 11;
  const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  return Array.from({ length: n }, () => {
    let s = "";
    const len = Math.floor(next() * 300);
    for (let i = 0; i < len; i++) s += chars[Math.floor(next() * chars.length)];
    return s;
  });
}

Deno.test("encodingCounter counts exactly as js-tiktoken, for o200k_base and cl100k_base", async () => {
  const texts = [
    "Hello, world",
    "你好，世界！这是一个测试。",
    "def f(x):\n    return x**2  # comment\n\n\n",
    "a".repeat(300),
    "🀄".repeat(40),
    ...samples(100),
  ];
  for (const [name, ranks] of [["o200k_base", o200k], ["cl100k_base", cl100k]] as const) {
    const ours = await encodingCounter(name);
    const reference = new Tiktoken(ranks);
    for (const text of texts) {
      assert.equal(ours(text), reference.encode(text).length, `${name}: ${JSON.stringify(text)}`);
    }
  }
});

Deno.test("a long run of CJK text is counted exactly, and never above its UTF-8 bytes", async () => {
  const count = await encodingCounter("o200k_base");
  const text = "我们在这里测试一下中文的分词效果。".repeat(1200); // 20 400 characters, one piece
  const reference = new Tiktoken(o200k);
  // js-tiktoken's merge is quadratic in a piece: compared on a slice it finishes on.
  const slice = text.slice(0, 1500);
  assert.equal(count(slice), reference.encode(slice).length);
  const n = count(text);
  assert.ok(n > text.length / 4 * 2, `far more than characters ÷ 4: ${n}`);
  assert.ok(n <= utf8Bytes(text));
});

Deno.test("tokenCounter: OpenAI's encodings for its models, UTF-8 bytes where the tokenizer is unknown", async () => {
  const text = "Hello there, 你好";
  const o = await encodingCounter("o200k_base");
  const cl = await encodingCounter("cl100k_base");
  assert.equal((await tokenCounter(MINI))(text), o(text));
  assert.equal((await tokenCounter(model("openai", "gpt-4-turbo")))(text), cl(text));
  assert.equal((await tokenCounter(model("openai", "text-embedding-3-small")))(text), cl(text));
  for (const m of [model("anthropic", "claude-haiku-4-5"), model("gemini", "gemini-2.5-flash")]) {
    assert.equal((await tokenCounter(m))(text), utf8Bytes(text));
  }
  // An OpenAI-compatible host's own model (Llama, …): its tokenizer is not OpenAI's.
  assert.equal((await tokenCounter(model("openai", "llama-3.3-70b")))(text), utf8Bytes(text));
});

Deno.test("imageSize reads PNG, JPEG, GIF and WebP headers; anything else is unknown", () => {
  for (const header of [pngBase64, jpegBase64, gifBase64, webpBase64]) {
    assert.deepEqual(imageSize({ url: `data:image/x;base64,${header(1200, 700)}` }), {
      width: 1200,
      height: 700,
    });
    assert.deepEqual(imageSize({ url: "", data: header(33, 44) }), { width: 33, height: 44 });
  }
  assert.equal(imageSize({ url: "https://example.com/cat.png" }), null);
  assert.equal(imageSize({ url: "data:image/png;base64,bm90IGFuIGltYWdl" }), null);
  assert.equal(imageSize({ url: "data:image/png;base64,%%%" }), null);
});

Deno.test("image tokens follow each provider's rules, never above the model's worst case", () => {
  const png = (w: number, h: number) => ({ url: `data:image/png;base64,${pngBase64(w, h)}` });
  // OpenAI tiles: 1024 × 1024 → 768 × 768, 4 tiles; gpt-4o 85 + 4 × 170, gpt-4o-mini 2833 + 4 × 5667.
  assert.equal(imageTokens(model("openai", "gpt-4o"), png(1024, 1024)), 765);
  assert.equal(imageTokens(MINI, png(1024, 1024)), 25_501);
  assert.equal(imageTokens(MINI, { ...png(1024, 1024), detail: "low" }), 2833);
  // 2048 × 4096 → 1024 × 2048 → 768 × 1536: 6 tiles.
  assert.equal(imageTokens(model("openai", "gpt-4o"), png(2048, 4096)), 85 + 6 * 170);
  // Patches: 1024 × 1024 is 32 × 32 = 1024 patches × 1.62 (gpt-4.1-mini).
  assert.equal(imageTokens(model("openai", "gpt-4.1-mini"), png(1024, 1024)), 1659);
  // Anthropic: w × h / 750, capped; Gemini: 258 a tile (small images one tile).
  assert.equal(imageTokens(model("anthropic", "claude-haiku-4-5"), png(200, 200)), 54);
  assert.equal(imageTokens(model("anthropic", "claude-haiku-4-5"), png(4000, 4000)), 1600);
  assert.equal(imageTokens(model("gemini", "gemini-2.5-flash"), png(300, 300)), 258);
  assert.equal(imageTokens(model("gemini", "gemini-2.5-flash"), png(1536, 1536)), 4 * 258);
  // Without a readable size: the worst case, the hold's allowance.
  for (
    const m of [
      MINI,
      model("openai", "gpt-4o"),
      model("openai", "some-new-model"),
      model("anthropic", "claude-haiku-4-5"),
      model("gemini", "gemini-2.5-flash"),
    ]
  ) {
    const worst = worstImageTokens(m);
    assert.equal(imageTokens(m, { url: "https://example.com/a.png" }), worst);
    for (const [w, h] of [[1, 1], [512, 512], [100_000, 3], [3, 100_000], [65_535, 65_535]]) {
      assert.ok(imageTokens(m, png(w, h)) <= worst, `${m.catalogId} ${w}×${h}`);
    }
  }
  assert.equal(worstImageTokens(MINI), 2833 + 8 * 5667);
});

Deno.test("Prompt: the hold's bound covers the router's count, text, images, audio and files alike", async () => {
  const count = await encodingCounter("o200k_base");
  const image = (w: number, h: number) => ({
    type: "image_url",
    image_url: { url: `data:image/png;base64,${pngBase64(w, h)}`, detail: "high" },
  });
  const bodies: Record<string, unknown>[] = [
    { model: "m", messages: [{ role: "user", content: "你好".repeat(500) }] },
    { model: "m", messages: [{ role: "user", content: [image(1024, 1024), image(64, 64)] }] },
    {
      model: "m",
      messages: [{
        role: "user",
        content: [{ type: "input_audio", input_audio: { data: "AAAA" } }],
      }],
    },
    {
      model: "m",
      messages: [{ role: "user", content: [{ type: "file", file: { file_id: "f" } }] }],
    },
    { model: "m", input: [{ role: "user", content: [{ type: "input_image", image_url: "x" }] }] },
  ];
  for (const body of bodies) {
    const raw = JSON.stringify(body);
    const prompt = new Prompt(raw, body);
    for (const searches of [0, 2]) {
      const counted = prompt.count(MINI, count, searches);
      assert.ok(counted.prompt <= prompt.bound([MINI], searches), raw.slice(0, 80));
      assert.ok((counted.audioIn ?? 0) <= counted.prompt);
    }
  }
  // Text: the tokenizer's count of the body; images by their rules.
  const text = new Prompt(JSON.stringify(bodies[0]), bodies[0]);
  assert.equal(text.count(MINI, count).prompt, count(JSON.stringify(bodies[0])));
  const images = new Prompt(JSON.stringify(bodies[1]), bodies[1]);
  assert.equal(images.media.images.length, 2);
  assert.equal(
    images.count(MINI, count).prompt,
    count(JSON.stringify({
      model: "m",
      messages: [{ role: "user", content: [{ type: "image_url" }, { type: "image_url" }] }],
    })) + 25_501 + (2833 + 5667),
  );
  assert.equal(images.bound([MINI]), images.bytes + 2 * (2833 + 8 * 5667));
  // Audio: no honest count, so all of its bytes, at the audio rate.
  const audio = new Prompt(JSON.stringify(bodies[2]), bodies[2]).count(MINI, count);
  assert.equal(audio.prompt, utf8Bytes(JSON.stringify(bodies[2])));
  assert.equal(audio.audioIn, audio.prompt);
  // A file the body does not carry: a context window.
  const file = new Prompt(JSON.stringify(bodies[3]), bodies[3]);
  assert.ok(file.count(MINI, count).prompt > 128_000);
  // Anthropic's tool prompts are held for: a bash tool costs hundreds of tokens from a few bytes.
  const tools = { model: "m", messages: [], tools: [{ type: "bash_20250124", name: "bash" }] };
  const haiku = model("anthropic", "claude-haiku-4-5", 200_000);
  const withTools = new Prompt(JSON.stringify(tools), tools);
  assert.ok(withTools.bound([haiku]) >= withTools.bytes + 346 + 700);
});

Deno.test("countStreamedOutput counts each delta with the model's tokenizer, at least one token each", async () => {
  const count = await encodingCounter("o200k_base");
  const text = "The weather in Paris is mild. 巴黎的天气很温和。";
  assert.equal(
    countStreamedOutput(sse({ choices: [{ delta: { content: text } }] }), count),
    count(text),
  );
  assert.equal(
    countStreamedOutput(sse({ choices: [{ delta: { reasoning_content: text } }] }), count),
    count(text),
  );
  // A tool call streams its arguments under `function`: they are output the provider bills.
  const args = '{"city":"Paris","unit":"celsius","days":7}';
  const stream = sse(
    { choices: [{ delta: { tool_calls: [{ index: 0, function: { name: "weather" } }] } }] },
    { choices: [{ delta: { tool_calls: [{ index: 0, function: { arguments: args } }] } }] },
  );
  assert.equal(countStreamedOutput(stream, count), count("weather") + count(args));
  // Anthropic and Responses deltas.
  assert.equal(
    countStreamedOutput(
      sse(
        { type: "content_block_delta", delta: { type: "text_delta", text } },
        { type: "content_block_delta", delta: { type: "thinking_delta", thinking: text } },
        { type: "content_block_delta", delta: { type: "input_json_delta", partial_json: args } },
      ),
      count,
    ),
    2 * count(text) + count(args),
  );
  assert.equal(
    countStreamedOutput(sse({ type: "response.output_text.delta", delta: text }), count),
    count(text),
  );
  // Each delta is at least one token, however short; without a tokenizer, UTF-8 bytes.
  assert.equal(
    countStreamedOutput(sse(...Array(6).fill({ choices: [{ delta: { content: "a" } }] })), count),
    6,
  );
  assert.equal(countStreamedOutput(sse({ delta: "héllo" })), 6);
});

Deno.test("countReplyOutput counts a reply's text, tool arguments and tool input", async () => {
  const count = await encodingCounter("o200k_base");
  assert.equal(
    countReplyOutput({
      choices: [{
        message: {
          role: "assistant",
          content: "你好，世界",
          tool_calls: [{ function: { name: "f", arguments: '{"q":1}' } }],
        },
      }],
    }, count),
    count("你好，世界") + count('{"q":1}'),
  );
  const input = { q: "x".repeat(30) };
  assert.equal(
    countReplyOutput({ content: [{ type: "tool_use", name: "f", input }] }),
    JSON.stringify(input).length,
  );
});
