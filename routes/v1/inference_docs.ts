/**
 * The inference endpoints in the OpenAPI document (their handlers are in inference.ts). Their
 * request bodies are the schemas the routes parse with, imported from where they live; their
 * answers are the providers' formats, of which the document promises what the router adds: the
 * usage with `cost` and `market_cost` (USD numbers).
 */
import { z } from "zod";
import { chatBody as chatSchema } from "../../lib/formats/chat.ts";
import {
  countTokensBody as countSchema,
  messagesBody as messagesSchema,
} from "../../lib/formats/messages.ts";
import { responsesBody as responsesSchema } from "../../lib/formats/responses.ts";
import { embeddingsBody as embeddingsSchema } from "../../lib/formats/embeddings.ts";
import {
  type ApiRoutes,
  apiRoutes,
  errorResponses,
  jsonBody,
  jsonResponse,
  SECURITY,
} from "../../lib/http/openapi.ts";

const money = { cost: z.number(), market_cost: z.number() };
const openAIUsage = z.looseObject({
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int().optional(),
  total_tokens: z.number().int(),
  ...money,
});
const ChatCompletion = z.looseObject({
  id: z.string(),
  object: z.literal("chat.completion"),
  model: z.string(),
  choices: z.array(z.looseObject({ index: z.number().int() })),
  usage: openAIUsage,
}).meta({ id: "ChatCompletion", description: "OpenAI's chat completion, usage priced" });
const Embeddings = z.looseObject({
  object: z.literal("list"),
  data: z.array(z.looseObject({ index: z.number().int() })),
  model: z.string(),
  usage: openAIUsage,
}).meta({ id: "Embeddings", description: "OpenAI's embeddings list, usage priced" });
const anthropicUsage = z.looseObject({
  input_tokens: z.number().int(),
  output_tokens: z.number().int(),
  ...money,
});
const Message = z.looseObject({
  id: z.string(),
  type: z.literal("message"),
  role: z.literal("assistant"),
  content: z.array(z.looseObject({ type: z.string() })),
  model: z.string(),
  usage: anthropicUsage,
}).meta({ id: "Message", description: "Anthropic's message, usage priced" });
const Response = z.looseObject({
  id: z.string(),
  object: z.literal("response"),
  output: z.array(z.looseObject({ type: z.string() })),
  usage: z.looseObject({
    input_tokens: z.number().int(),
    output_tokens: z.number().int(),
    ...money,
  }),
}).meta({ id: "Response", description: "OpenAI's response, usage priced" });
const stream = { "text/event-stream": { schema: z.string() } };
const refusals = errorResponses(400, 401, 402, 403, 404, 413, 429, 502, 504);

/** Documents one inference operation (the handler is mounted by inference.ts). */
function inference(app: ApiRoutes, path: string, summary: string, body: z.ZodType, ok: z.ZodType) {
  app.openAPIRegistry.registerPath({
    method: "post",
    path,
    tags: ["Inference"],
    summary,
    security: SECURITY.inference,
    request: { body: jsonBody(body) },
    responses: {
      200: {
        description: "The provider's answer (a stream when `stream` is true)",
        content: { ...jsonResponse(ok, "").content, ...stream },
      },
      ...refusals,
    },
  });
}

/** The inference endpoints' declarations, mounted with the other API modules. */
export default function inferenceDocs() {
  const app = apiRoutes();
  inference(
    app,
    "/chat/completions",
    "OpenAI chat completions, to any provider (translated where needed)",
    chatSchema,
    ChatCompletion,
  );
  inference(app, "/embeddings", "OpenAI embeddings", embeddingsSchema, Embeddings);
  inference(app, "/messages", "Anthropic Messages, to any chat model", messagesSchema, Message);
  inference(app, "/responses", "OpenAI Responses, passed to OpenAI", responsesSchema, Response);
  app.openAPIRegistry.registerPath({
    method: "post",
    path: "/messages/count_tokens",
    tags: ["Inference"],
    summary: "A Messages body's input tokens; free",
    security: SECURITY.inference,
    request: { body: jsonBody(countSchema) },
    responses: {
      200: jsonResponse(
        z.looseObject({ input_tokens: z.number().int() }).meta({ id: "TokenCount" }),
        "The count",
      ),
      ...errorResponses(400, 401, 403, 404),
    },
  });
  return app;
}
