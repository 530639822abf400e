/**
 * Turns a plugin's entry (TypeScript or JavaScript) into one plain ES module that a worker thread,
 * child process or piscina pool can import without a TypeScript loader. On Node 20 a worker cannot
 * use tsx's hooks from execArgv, and registering tsx inside each worker costs ~260 ms per start;
 * bundling in the main thread with esbuild costs a few milliseconds (MEASURED.md, section 2).
 *
 * The plugin's own files (and any TypeScript it imports, such as bolt-plugin-sdk) are bundled;
 * packages from node_modules stay external, imported at run time by absolute file URL, so they load
 * exactly as they would from the plugin's folder. `import.meta.url` keeps naming each source file.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, writeFile, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as esbuild from 'esbuild';
import { BoltError } from '../../plugin-sdk/src/errors.ts';

const SDK_ENTRY = fileURLToPath(new URL('../../plugin-sdk/src/index.ts', import.meta.url));
const SDK_DIR = path.dirname(SDK_ENTRY);
const TS_FILE = /\.(ts|mts|cts|tsx)$/;

/** Resolves bare imports: the SDK to the core's own copy, TypeScript to be bundled, the rest external by URL. */
const resolvePlugin: esbuild.Plugin = {
  name: 'bolt-resolve',
  setup(build) {
    build.onResolve({ filter: /^bolt-plugin-sdk(\/.*)?$/ }, (args) => {
      const sub = args.path.slice('bolt-plugin-sdk'.length);
      const target = sub === '' ? SDK_ENTRY : sub === '/schemas' ? path.join(SDK_DIR, 'schemas/index.ts') : sub === '/testing' ? path.join(SDK_DIR, 'testing.ts') : undefined;
      if (!target) return { errors: [{ text: `bolt-plugin-sdk has no export '${sub}'` }] };
      return { path: target };
    });
    build.onResolve({ filter: /^[^./]/ }, async (args) => {
      if (args.path.startsWith('node:') || args.pluginData === 'resolving') return undefined;
      const result = await build.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, pluginData: 'resolving' });
      if (result.errors.length > 0) return { errors: result.errors };
      if (result.external || TS_FILE.test(result.path)) return undefined;
      return { path: pathToFileURL(result.path).href, external: true };
    });
    build.onLoad({ filter: /\.(ts|mts|js|mjs)$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      const url = JSON.stringify(pathToFileURL(args.path).href);
      const contents = source
        .replaceAll('import.meta.url', url)
        .replaceAll('import.meta.dirname', JSON.stringify(path.dirname(args.path)))
        .replaceAll('import.meta.filename', JSON.stringify(args.path));
      const loader = args.path.endsWith('ts') ? 'ts' : 'js';
      return { contents, loader, resolveDir: path.dirname(args.path) };
    });
  },
};

/**
 * esbuild builds in a child process of its own that stays up between builds (about 40 MB resident
 * and a steady trickle of CPU while idle). It is stopped once no build has run for this long; the
 * next build starts it again, which adds about 15 ms to that build.
 */
const SERVICE_IDLE_MS = 5000;
let buildsRunning = 0;
let serviceIdleTimer: NodeJS.Timeout | undefined;

function buildStarted(): void {
  buildsRunning++;
  clearTimeout(serviceIdleTimer);
}

function buildEnded(): void {
  if (--buildsRunning > 0) return;
  serviceIdleTimer = setTimeout(() => void esbuild.stop(), SERVICE_IDLE_MS);
  serviceIdleTimer.unref();
}

/**
 * Bundles `entryFile` into `cacheDir` and returns the file URL of the result. The file name is the
 * hash of the output, so an unchanged plugin reuses its file and concurrent cores never clash.
 */
export async function bundlePlugin(entryFile: string, cacheDir: string, label: string): Promise<string> {
  let output: esbuild.BuildResult<{ write: false }>;
  buildStarted();
  try {
    output = await esbuild.build({
      entryPoints: [entryFile],
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      // Stack traces still map to the plugin's own files; their text stays on disk, not in every isolate.
      sourcemap: 'inline',
      sourcesContent: false,
      logLevel: 'silent',
      plugins: [resolvePlugin],
      // Bundled CommonJS-style code may call require(); give it one rooted at the entry.
      banner: { js: `import { createRequire as __boltRequire } from 'node:module'; const require = __boltRequire(${JSON.stringify(pathToFileURL(entryFile).href)});` },
    });
  } catch (err) {
    const failure = err as esbuild.BuildFailure;
    const first = failure.errors?.[0];
    const where = first?.location ? `${first.location.file}:${first.location.line}:${first.location.column + 1}` : entryFile;
    throw new BoltError('BOLT_ERR_PLUGIN_BUILD', `${where}: ${first?.text ?? String(err)}`, { cause: err });
  } finally {
    buildEnded();
  }
  const code = output.outputFiles[0]!.contents;
  const hash = createHash('sha256').update(code).digest('hex').slice(0, 16);
  await mkdir(cacheDir, { recursive: true });
  const file = path.join(cacheDir, `${label}-${hash}.mjs`);
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, code);
  await rename(tmp, file);
  return pathToFileURL(file).href;
}
