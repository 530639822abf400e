/**
 * The CLI's client for a server's HTTP API (`run`, `runs`, `show`, `cancel`, `demo`): finds the
 * server and its API token, sends requests, and turns error answers into coded errors.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import { usageError, type Command } from './command.ts';

/** Where the transport plugin keeps the API token, relative to a server's data directory. */
const TOKEN_FILE = path.join('plugins', 'transport-ws', 'api-token');

export interface ServerApi {
  /** The API's base URL (http:// or https://). */
  readonly url: string;
  get<T>(route: string): Promise<T>;
  /** A route that answers text (a report page); error answers are JSON as everywhere. */
  getText(route: string): Promise<string>;
  post<T>(route: string, body: string, contentType?: string): Promise<T>;
}

/** An error answer of the API, with its code and details. */
export class ApiError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  constructor(status: number, code: string, message: string, details?: Record<string, unknown>) {
    super(message);
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

/** `--server` (or the flag named) as the API's base URL: http(s):// as given; the clients' ws(s):// URL is accepted too. */
export function apiBaseUrl(server: string | undefined, command: Command, flag = '--server'): string {
  const given = server ?? 'http://127.0.0.1:7700';
  let url: URL;
  try {
    url = new URL(given);
  } catch {
    throw usageError(`${flag} must be a URL such as http://HOST:${flag === '--sink' ? 7701 : 7700} (got '${given}')`, command);
  }
  if (url.protocol === 'ws:') url.protocol = 'http:';
  else if (url.protocol === 'wss:') url.protocol = 'https:';
  else if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usageError(`${flag} must be http://, https://, ws:// or wss:// (got '${given}')`, command);
  return url.origin;
}

/** The token: --token, else $BOLT_API_TOKEN, else the one in the local server's data directory. */
export async function apiToken(token: string | undefined, dataDir: string): Promise<string> {
  if (token) return token;
  if (process.env.BOLT_API_TOKEN) return process.env.BOLT_API_TOKEN;
  const file = path.join(path.resolve(dataDir), TOKEN_FILE);
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    throw new BoltError('BOLT_ERR_CLI_NOT_RUNNING', `no API token: pass --token or set BOLT_API_TOKEN (a server on this machine keeps it in ${file}; pass its --data)`);
  }
}

export function connectServer(url: string, token: string, ca?: Buffer): ServerApi {
  const dispatcher = ca ? new Agent({ connect: { ca } }) : undefined;
  async function call<T>(method: string, route: string, body?: string, contentType?: string, asText = false): Promise<T> {
    let res: Awaited<ReturnType<typeof undiciFetch>>;
    try {
      res = await undiciFetch(`${url}${route}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(contentType && { 'content-type': contentType }) },
        ...(body !== undefined && { body }),
        ...(dispatcher && { dispatcher }),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (err) {
      throw new BoltError('BOLT_ERR_CLI_NOT_RUNNING', `the server at ${url} did not answer: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`, { cause: err });
    }
    const text = await res.text();
    if (asText && res.ok) return text as T;
    let answer: unknown;
    try {
      answer = JSON.parse(text);
    } catch {
      throw new ApiError(res.status, 'ERR_UNKNOWN', `the server answered ${res.status} with something that is not JSON`);
    }
    if (!res.ok) {
      const e = (answer as { error?: { code?: string; message?: string; details?: Record<string, unknown> } }).error;
      throw new ApiError(res.status, e?.code ?? 'ERR_UNKNOWN', e?.message ?? `the server answered ${res.status}`, e?.details);
    }
    return answer as T;
  }
  return {
    url,
    get: (route) => call('GET', route),
    getText: (route) => call<string>('GET', route, undefined, undefined, true),
    post: (route, body, contentType) => call('POST', route, body, contentType),
  };
}
