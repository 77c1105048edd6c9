/**
 * The seed client's `./llm-adapters` (not given by the seed): only the result type
 * it imports, with the fields the client fills in.
 */

export interface HiddenStateResult {
  prompt: string;
  hiddenState: number[];
  layer: number;
  tokenCount: number;
  metadata: {
    model: string;
    provider: string;
    timestamp: Date;
    processingTime: number;
  };
}
