import { expect } from 'chai';
import fs from 'node:fs';
import http from 'node:http';
import { BoltError } from '../../../../plugin-sdk/src/errors.ts';
import { API_TOKEN_FILE, EventStreamResponse, Listener, MAX_EVENT_STREAM_BYTES, SESSION_COOKIE, TextResponse, type ApiRequest, type EventSink, type RouteHandler } from '../../server/listener.ts';
import { eventually } from '../../../../test/helpers/processes.ts';
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

  describe('browsers (browserLogin)', () => {
    async function startBrowserFacing(dataDir: string, streams: EventSink[] = [], ended: string[] = []): Promise<Listener> {
      const routes = new Map<string, RouteHandler>([
        ['/', () => new TextResponse('text/html; charset=utf-8', '<p>dashboard</p>', { 'content-security-policy': "default-src 'self'" })],
        ['/api/runs', () => [{ id: 'r1' }]],
        ['POST /api/runs/:id/cancel', (req) => ({ cancelled: req.params.id })],
        ['/api/live', (req) => new EventStreamResponse((sink) => {
          streams.push(sink);
          return () => ended.push(req.query.get('run') ?? '');
        })],
      ]);
      return Listener.start({ port: 0, host: '127.0.0.1', dataDir, routes, browserLogin: true });
    }

    it('trades ?token= for an HttpOnly SameSite=Strict cookie that authenticates reads but never a POST', async () => {
      const listener = await startBrowserFacing(tempDir());
      try {
        const wrong = await fetch(listener.url(`/?token=${listener.token}x`), { redirect: 'manual' });
        expect(wrong.status).to.equal(401);
        expect(wrong.headers.get('set-cookie')).to.equal(null);
        expect(await wrong.text()).to.include('?token=');

        const login = await fetch(listener.url(`/?token=${listener.token}&view=runs`), { redirect: 'manual' });
        expect(login.status).to.equal(303);
        expect(login.headers.get('location'), 'the token leaves the address bar').to.equal('/?view=runs');
        const cookie = login.headers.get('set-cookie') ?? '';
        expect(cookie).to.match(new RegExp(`^${SESSION_COOKIE}=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=Strict$`));
        expect(cookie, 'the cookie is not the token').not.to.include(listener.token);
        const session = cookie.split(';')[0]!;

        const page = await fetch(listener.url('/'), { headers: { cookie: session } });
        expect(page.status).to.equal(200);
        expect(page.headers.get('content-security-policy')).to.equal("default-src 'self'");
        expect(page.headers.get('x-content-type-options')).to.equal('nosniff');
        expect(await page.text()).to.equal('<p>dashboard</p>');
        expect((await fetch(listener.url('/api/runs'), { headers: { cookie: `other=1; ${session}` } })).status).to.equal(200);
        expect((await fetch(listener.url('/api/runs/r1/cancel'), { method: 'POST', headers: { cookie: session } })).status, 'a cookie never authorizes a change').to.equal(401);
        expect((await fetch(listener.url('/api/runs/r1/cancel'), { method: 'POST', headers: { authorization: `Bearer ${listener.token}` } })).status).to.equal(200);
        expect((await fetch(listener.url('/api/runs'), { headers: { cookie: `${SESSION_COOKIE}=${listener.token}` } })).status).to.equal(401);

        const anonymous = await fetch(listener.url('/'));
        expect(anonymous.status).to.equal(401);
        expect(anonymous.headers.get('content-type')).to.match(/^text\/html/);
        expect((await fetch(listener.url('/api/runs'))).headers.get('content-type')).to.match(/^application\/json/);
      } finally {
        await listener.close();
      }
    });

    it('streams server-sent events until the reader leaves, and drops a reader that stops reading', async () => {
      const streams: EventSink[] = [];
      const ended: string[] = [];
      const listener = await startBrowserFacing(tempDir(), streams, ended);
      try {
        const controller = new AbortController();
        const res = await fetch(listener.url('/api/live?run=r1'), { headers: { authorization: `Bearer ${listener.token}` }, signal: controller.signal });
        expect(res.headers.get('content-type')).to.equal('text/event-stream; charset=utf-8');
        const reader = res.body!.getReader();
        await eventually(() => streams.length === 1 || undefined, 5000);
        expect(streams[0]!.send('task', { kind: 'task', runId: 'r1', n: 1 })).to.equal(true);
        let text = '';
        while (!text.includes('\n\nevent: task')) text += new TextDecoder().decode((await reader.read()).value);
        while (!text.endsWith('\n\n')) text += new TextDecoder().decode((await reader.read()).value);
        expect(text).to.equal(': bolt\n\nevent: task\ndata: {"kind":"task","runId":"r1","n":1}\n\n');
        controller.abort();
        await eventually(() => ended.length === 1 || undefined, 5000);
        expect(ended).to.deep.equal(['r1']);
        expect(streams[0]!.send('task', {})).to.equal(false);

        // A reader that never reads: the socket's buffers fill, then the listener's, then it is dropped.
        const stalled = await new Promise<http.IncomingMessage>((resolve, reject) => {
          http.get(listener.url('/api/live?run=r2'), { headers: { authorization: `Bearer ${listener.token}` } }, resolve).on('error', reject);
        });
        stalled.pause();
        await eventually(() => streams.length === 2 || undefined, 5000);
        const chunk = { kind: 'metrics', pad: 'x'.repeat(64 * 1024) };
        let sent = 0;
        while (streams[1]!.send('metrics', chunk) && sent < 1000) sent++;
        expect(sent, 'sends before the stalled reader was dropped').to.be.within(MAX_EVENT_STREAM_BYTES / (64 * 1024), 999);
        await eventually(() => ended.length === 2 || undefined, 5000);
        stalled.destroy();
      } finally {
        await listener.close();
      }
    });
  });
});
