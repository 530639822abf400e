/** The core's logger: one JSON line per event, pretty-printed when stdout is a terminal. */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export function createLogger(level: string = process.env.BOLT_LOG_LEVEL ?? 'info'): Logger {
  if (process.stdout.isTTY) {
    return pino({ level }, pretty({ colorize: true, sync: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' }));
  }
  return pino({ level, base: { pid: process.pid } });
}
