/**
 * The seed client's `../utils/logger` (not given by the seed): JSON lines on stderr,
 * so that stdout stays the driver's one JSON answer.
 */

export type LogMeta = Record<string, unknown>;

export interface Logger {
  info(message: string, meta?: LogMeta): void;
  warn(message: string, meta?: LogMeta): void;
  error(message: string, meta?: LogMeta): void;
  debug(message: string, meta?: LogMeta): void;
}

type Level = "info" | "warn" | "error" | "debug";

// Errors have no enumerable fields: JSON.stringify would print them as {}.
function plain(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, cause: value.cause };
  }
  return value;
}

export function createLogger(name: string): Logger {
  const write = (level: Level, message: string, meta?: LogMeta): void => {
    const line = { time: new Date().toISOString(), level, logger: name, message, ...meta };
    process.stderr.write(JSON.stringify(line, plain) + "\n");
  };
  return {
    info: (message, meta) => write("info", message, meta),
    warn: (message, meta) => write("warn", message, meta),
    error: (message, meta) => write("error", message, meta),
    debug: (message, meta) => write("debug", message, meta),
  };
}
