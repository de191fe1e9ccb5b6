import assert from "node:assert/strict";
import {
  countReplyOutput,
  countStreamedOutput,
  estimatePromptTokens,
  promptTokenBound,
} from "../../lib/proxy/tokens.ts";

const sse = (...events: unknown[]) => events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join("");

Deno.test("countStreamedOutput counts chat content, reasoning and tool-call arguments", () => {
  const text = "x".repeat(40); // 10 tokens at four characters a token
  assert.equal(countStreamedOutput(sse({ choices: [{ delta: { content: text } }] })), 10);
  assert.equal(
    countStreamedOutput(sse({ choices: [{ delta: { reasoning_content: text } }] })),
    10,
  );
  // A tool call streams its arguments under `function`: they are output the provider bills.
  const args = '{"city":"Paris","unit":"celsius","days":7,"detail":"hourly","lang":"en"}';
  const toolCall = (s: string) => ({
    choices: [{ delta: { tool_calls: [{ index: 0, function: { arguments: s } }] } }],
  });
  const stream = sse(
    {
      choices: [{
        delta: {
          tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "weather" } }],
        },
      }],
    },
    toolCall(args.slice(0, 36)),
    toolCall(args.slice(36)),
  );
  assert.equal(countStreamedOutput(stream), Math.ceil(("weather".length + args.length) / 4));
});

Deno.test("countStreamedOutput counts Anthropic and Responses deltas", () => {
  assert.equal(
    countStreamedOutput(sse(
      { type: "content_block_delta", delta: { type: "text_delta", text: "a".repeat(20) } },
      { type: "content_block_delta", delta: { type: "thinking_delta", thinking: "b".repeat(20) } },
      {
        type: "content_block_delta",
        delta: { type: "input_json_delta", partial_json: "c".repeat(20) },
      },
    )),
    15,
  );
  assert.equal(
    countStreamedOutput(sse({ type: "response.output_text.delta", delta: "d".repeat(80) })),
    20,
  );
  // Each delta is at least one token, however short.
  assert.equal(
    countStreamedOutput(sse(...Array(6).fill({ choices: [{ delta: { content: "a" } }] }))),
    6,
  );
});

Deno.test("estimatePromptTokens counts messages, earlier tool calls and tools", () => {
  const base = estimatePromptTokens({ messages: [{ role: "user", content: "x".repeat(400) }] });
  assert.equal(base, 3 + 4 + 100);
  const args = "y".repeat(400);
  const withCall = estimatePromptTokens({
    messages: [
      { role: "user", content: "x".repeat(400) },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: args } }],
      },
    ],
  });
  assert.ok(withCall >= base + 4 + 100, `the earlier call's arguments count: ${withCall}`);
  const tools = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];
  assert.equal(
    estimatePromptTokens({ messages: [], tools }),
    3 + Math.ceil(JSON.stringify(tools).length / 4),
  );
});

Deno.test("promptTokenBound bounds by UTF-8 bytes and adds an allowance per image", () => {
  assert.equal(promptTokenBound("abcd"), 4);
  assert.equal(promptTokenBound("é"), 2);
  assert.equal(promptTokenBound('{"type":"image_url"}'), 20 + 2000);
});

Deno.test("countReplyOutput counts a reply's text, tool arguments and tool input", () => {
  assert.equal(
    countReplyOutput({
      choices: [{
        message: {
          role: "assistant",
          content: "a".repeat(40),
          tool_calls: [{ function: { name: "f", arguments: "b".repeat(40) } }],
        },
      }],
    }),
    20,
  );
  assert.equal(
    countReplyOutput({ content: [{ type: "tool_use", name: "f", input: { q: "x".repeat(30) } }] }),
    Math.ceil(JSON.stringify({ q: "x".repeat(30) }).length / 4),
  );
});
