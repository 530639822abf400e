import { definePlugin } from 'bolt-plugin-sdk';

interface Config {
  prefix: string;
}

/** Serves `example.echo`: strings come back with the configured prefix, anything else unchanged. */
export default definePlugin<Config>({
  start(ctx) {
    ctx.bus.provide('example.echo', (data) => (typeof data === 'string' ? `${ctx.config.prefix}${data}` : data));
  },
});
