/**
 * Driver of the seed TypeScript client (001_… §3.2, copied beside this file at test
 * time as ./self-hosted-llm-client.ts, unchanged): calls what the seed's users call
 * against the server at $LAMINA_URL and prints one JSON object on stdout, each call's
 * value or the error it threw (the client's own logs go to stderr).
 */

import { createSelfHostedClient } from "./self-hosted-llm-client";

type Outcome<T> = { value: T } | { error: string };

async function outcome<T>(call: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { value: await call() };
  } catch (e) {
    if (!(e instanceof Error)) {
      return { error: String(e) };
    }
    const cause = e.cause instanceof Error ? ` (cause: ${e.cause.message})` : "";
    return { error: `${e.name}: ${e.message}${cause}` };
  }
}

// The same lists are in tests/server/test_seed_client.py (SINGLE, BATCH), which checks them.
export const SINGLE_PROMPTS = ["What is AI?", "Explain machine learning"];
export const BATCH_PROMPTS = [
  "What is AI?",
  "Explain machine learning",
  "The quick brown fox jumps over the lazy dog.",
  "Hidden states",
  "A longer prompt, so that the batch mixes lengths: one, two, three, four, five.",
];

async function main(): Promise<void> {
  const baseUrl = process.env["LAMINA_URL"];
  if (!baseUrl) {
    throw new Error("LAMINA_URL is not set");
  }
  const client = createSelfHostedClient({
    baseUrl,
    modelName: process.env["LAMINA_MODEL"] ?? "lamina",
    timeout: 60000,
    maxRetries: 1,
  });

  const answer = {
    healthCheck: await outcome(() => client.healthCheck()),
    extractHiddenStates: await outcome(() => client.extractHiddenStates(SINGLE_PROMPTS, -2)),
    extractHiddenStatesBatch: await outcome(() =>
      client.extractHiddenStatesBatch(BATCH_PROMPTS, -2, 2),
    ),
    // each batch prompt alone, to compare the batch with
    extractHiddenStatesEach: await Promise.all(
      BATCH_PROMPTS.map((p) => outcome(() => client.extractHiddenStates([p], -2))),
    ),
    complete: await outcome(() => client.complete("Hello", { maxTokens: 4 })),
    completeWithHiddenStates: await outcome(() =>
      client.complete("Hello", { maxTokens: 4, outputHiddenStates: true, hiddenStateLayer: -2 }),
    ),
  };
  process.stdout.write(JSON.stringify(answer) + "\n");
}

main().catch((e: unknown) => {
  process.stderr.write(`driver failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
