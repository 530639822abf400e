import { expect } from 'chai';
import fs from 'node:fs';
import http from 'node:http';
import { BoltError } from '../../../../plugin-sdk/src/errors.ts';
import { API_TOKEN_FILE, Listener, TextResponse, type ApiRequest, type RouteHandler } from '../../server/listener.ts';
import { cleanUp, rawRequest, tempDir } from './harness.ts';

async function start(dataDir: string, seen: ApiRequest[] = []): Promise<Listener> {
  const routes = new Map<string, RouteHandler>([
    ['/api/health', () => ({ ok: true })],
    ['/api/hosts', (req) => {
      seen.push(req);
      return [{ labels: req.query.getAll('label') }];
    }],
    ['/api/plugins', () => {
      throw new BoltError('BOLT_ERR_BUS_NO_PROVIDER', "no running plugin provides 'core.plugins'");
    }],
    ['/metrics', () => new TextResponse('text/plain; version=0.0.4', 'bolt_up 1\n')],
    ['POST /api/runs/:id/cancel', (req) => ({ cancelled: req.params.id, body: req.body.toString() })],
    ['GET /api/runs/:id', (req) => {
      if (req.params.id === 'nope') throw new BoltError('BOLT_ERR_RUN_NOT_FOUND', 'no run nope');
      return { id: req.params.id };
    }],
  ]);
  const listener = await Listener.start({ port: 0, host: '127.0.0.1', dataDir, routes });
  return listener;
}

async function get(url: string, token?: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() };
}

describe('transport-ws server: Listener (HTTP API, token, limits)', function () {
  this.timeout(10_000);
  afterEach(cleanUp);

  it('creates the token 0600 on first start and keeps it across a restart', async () => {
    const dir = tempDir();
    const first = await start(dir);
    const token = first.token;
    expect(fs.statSync(`${dir}/${API_TOKEN_FILE}`).mode & 0o777).to.equal(0o600);
    expect(token).to.match(/^[A-Za-z0-9_-]{43}$/);
    await first.close();
    const second = await start(dir);
    expect(second.token).to.equal(token);
    await second.close();
  });

  it('serves /api/health without a token and every other route only with the right one', async () => {
    const seen: ApiRequest[] = [];
    const listener = await start(tempDir(), seen);
    try {
      expect(await get(listener.url('/api/health'))).to.deep.equal({ status: 200, body: { ok: true } });
      expect((await get(listener.url('/api/hosts'))).status).to.equal(401);
      const wrong = await get(listener.url('/api/hosts'), `${listener.token.slice(0, -1)}x`);
      expect(wrong).to.deep.include({ status: 401 });
      expect((wrong.body as { error: { code: string } }).error.code).to.equal('BOLT_ERR_WIRE_API_UNAUTHORIZED');
      expect(seen).to.have.length(0);
      const ok = await get(listener.url('/api/hosts?label=zone=a&label=role=web'), listener.token);
      expect(ok).to.deep.equal({ status: 200, body: [{ labels: ['zone=a', 'role=web'] }] });
      expect(await get(listener.url('/api/plugins'), listener.token)).to.deep.equal({
        status: 503,
        body: { error: { code: 'BOLT_ERR_BUS_NO_PROVIDER', message: "no running plugin provides 'core.plugins'" } },
      });
      const missing = await get(listener.url('/api/nope'), listener.token);
      expect(missing.status).to.equal(404);
      expect((missing.body as { error: { code: string } }).error.code).to.equal('BOLT_ERR_WIRE_API_NOT_FOUND');
      const post = await fetch(listener.url('/api/health'), { method: 'POST', body: '{}' });
      expect(post.status).to.equal(405);
    } finally {
      await listener.close();
    }
  });

  it('routes by method and :param segments, decoded, with 404, 405 and error statuses', async () => {
    const listener = await start(tempDir());
    const auth = { authorization: `Bearer ${listener.token}` };
    try {
      const cancel = await fetch(listener.url('/api/runs/r%201/cancel'), { method: 'POST', headers: auth, body: 'why' });
      expect({ status: cancel.status, body: await cancel.json() }).to.deep.equal({ status: 200, body: { cancelled: 'r 1', body: 'why' } });
      expect((await get(listener.url('/api/runs/abc'), listener.token)).body).to.deep.equal({ id: 'abc' });
      expect((await get(listener.url('/api/runs/nope'), listener.token)).status).to.equal(404);
      expect((await fetch(listener.url('/api/runs/abc/cancel'), { headers: auth })).status).to.equal(405);
      expect((await get(listener.url('/api/runs/abc/extra/more'), listener.token)).status).to.equal(404);
      const text = await fetch(listener.url('/metrics'), { headers: auth });
      expect([text.status, text.headers.get('content-type'), await text.text()]).to.deep.equal([200, 'text/plain; version=0.0.4', 'bolt_up 1\n']);
      expect((await get(listener.url('/api/runs/%E0%A4%A'), listener.token)).status).to.equal(404);
    } finally {
      await listener.close();
    }
  });

  it('refuses a body over 1 MiB with 413 and a request with 5000 headers with 431', async () => {
    const listener = await start(tempDir());
    try {
      const status = await new Promise<number>((resolve, reject) => {
        const req = http.request(listener.url('/api/hosts'), { method: 'GET', headers: { authorization: `Bearer ${listener.token}`, 'content-length': 2 * 1024 * 1024 } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end(Buffer.alloc(2 * 1024 * 1024));
      });
      expect(status).to.equal(413);
      const chunked = await new Promise<number>((resolve, reject) => {
        const req = http.request(listener.url('/api/hosts'), { method: 'GET', headers: { authorization: `Bearer ${listener.token}`, 'transfer-encoding': 'chunked' } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', (err) => ((err as NodeJS.ErrnoException).code === 'ECONNRESET' || (err as NodeJS.ErrnoException).code === 'EPIPE' ? resolve(-1) : reject(err)));
        for (let i = 0; i < 20; i++) req.write(Buffer.alloc(64 * 1024));
        req.end();
      });
      // The server stops reading and closes: the client may see the reset before the 413.
      expect(chunked, 'a chunked body over the cap').to.be.oneOf([413, -1]);
      const lines = ['GET /api/health HTTP/1.1', 'Host: 127.0.0.1', ...Array.from({ length: 5000 }, (_, i) => `a${i % 10}:b`)];
      expect(await rawRequest(listener.port, lines)).to.match(/^HTTP\/1\.1 431 /);
      expect((await get(listener.url('/api/health'))).status).to.equal(200);
    } finally {
      await listener.close();
    }
  });
});
