/**
 * Watches plugin directories. Every event under `<dir>/<folder>/...` is debounced per folder until
 * writes settle, then the folder is handed to `onSettled` once, so a plugin copied file by file is
 * never loaded half-written. chokidar 5 has no globs; filtering is a function (MEASURED.md, 4).
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import chokidar, { type FSWatcher } from 'chokidar';

export interface WatcherOptions {
  dirs: string[];
  /** Quiet time after the last event in a folder before it is handed over. */
  settleMs: number;
  onSettled(folder: string): void;
}

function ignored(p: string): boolean {
  const base = path.basename(p);
  return base === 'node_modules' || (base.startsWith('.') && base.length > 1);
}

export class PluginWatcher {
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private watcher: FSWatcher | undefined;
  private readonly opts: WatcherOptions;

  constructor(opts: WatcherOptions) {
    this.opts = opts;
  }

  /** Lists the folders present now (for the initial load) and starts watching; resolves once the watch is live. */
  async start(): Promise<string[]> {
    const folders: string[] = [];
    for (const dir of this.opts.dirs) {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        if (ignored(e.name)) continue;
        const folder = path.join(dir, e.name);
        // A symbolic link to a plugin folder counts as the folder (createTestHost links one in).
        if (e.isDirectory() || (e.isSymbolicLink() && (await stat(folder).then((s) => s.isDirectory(), () => false)))) folders.push(folder);
      }
    }
    this.watcher = chokidar.watch(this.opts.dirs, { ignoreInitial: true, ignored, persistent: true });
    this.watcher.on('all', (_event, p) => this.touch(p));
    await new Promise<void>((resolve) => this.watcher!.once('ready', () => resolve()));
    return folders;
  }

  private touch(p: string): void {
    for (const dir of this.opts.dirs) {
      const rel = path.relative(dir, p);
      if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) continue;
      const folder = path.join(dir, rel.split(path.sep)[0]!);
      clearTimeout(this.timers.get(folder));
      this.timers.set(folder, setTimeout(() => {
        this.timers.delete(folder);
        this.opts.onSettled(folder);
      }, this.opts.settleMs));
      return;
    }
  }

  async close(): Promise<void> {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await this.watcher?.close();
  }
}
