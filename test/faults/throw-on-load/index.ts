/**
 * Fault zoo: the module throws at its top level, while it loads, so every load fails.
 * The default export has both shapes (a pool function with a `start`) so the one folder can be
 * loaded under every isolation; neither is ever reached.
 */
import { definePlugin } from 'bolt-plugin-sdk';

export default Object.assign((_input: unknown) => 'unreachable', definePlugin({ start() {} }));

throw new Error('fault: thrown at the top level of the module, while it loads');
