/**
 * The dashboard's files: its own page, script and styles from `assets/`, and uPlot's browser build
 * from the installed `uplot` package (never from the network). Read once when the plugin starts;
 * editing a file reloads the plugin, which reads them again.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** What `ui.asset` answers (the transport serves `body` with `contentType`). */
export interface Asset {
  contentType: string;
  body: string;
}

const ASSETS_DIR = fileURLToPath(new URL('./assets/', import.meta.url));

/** uPlot's dist folder, resolved like an import from this plugin. */
function uplotDist(): string {
  const require = createRequire(import.meta.url);
  return path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

/** Every file the page may ask for, by the name it asks for. */
export function loadAssets(): Map<string, Asset> {
  const dist = uplotDist();
  const files: Array<[string, string]> = [
    ['index.html', path.join(ASSETS_DIR, 'index.html')],
    ['app.js', path.join(ASSETS_DIR, 'app.js')],
    ['app.css', path.join(ASSETS_DIR, 'app.css')],
    ['uPlot.iife.min.js', path.join(dist, 'uPlot.iife.min.js')],
    ['uPlot.min.css', path.join(dist, 'uPlot.min.css')],
  ];
  return new Map(files.map(([name, file]) => [name, { contentType: TYPES[path.extname(name)]!, body: readFileSync(file, 'utf8') }]));
}
