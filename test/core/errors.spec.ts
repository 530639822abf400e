/**
 * The error code table and the README's "Error codes" section stay equal both ways.
 * `BOLT_UPDATE_DOCS=1 npm run test:file -- test/core/errors.spec.ts` rewrites the section from the table.
 */
import { expect } from 'chai';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ERROR_CODES } from '../../plugin-sdk/src/errors.ts';
import { REPO } from '../helpers/core.ts';

const README = path.join(REPO, 'README.md');
const HEADING = '## Error codes';

function renderTable(): string {
  const rows = Object.entries(ERROR_CODES).map(([code, text]) => `| \`${code}\` | ${text.replaceAll('|', '\\|')} |`);
  return ['| code | meaning |', '|---|---|', ...rows].join('\n');
}

function documentedCodes(readme: string): Map<string, string> {
  const start = readme.indexOf(HEADING);
  const rest = readme.slice(start + HEADING.length);
  const end = rest.search(/\n## /);
  const section = end === -1 ? rest : rest.slice(0, end);
  const codes = new Map<string, string>();
  for (const m of section.matchAll(/^\| `(BOLT_ERR_[A-Z_]+)` \| (.*) \|$/gm)) codes.set(m[1]!, m[2]!.replaceAll('\\|', '|'));
  return codes;
}

describe('error codes', () => {
  it('are all named BOLT_ERR_<AREA>_<WHAT> and explained', () => {
    for (const [code, text] of Object.entries(ERROR_CODES)) {
      expect(code).to.match(/^BOLT_ERR_[A-Z]+_[A-Z_]+$/);
      expect(text.length, code).to.be.greaterThan(20);
    }
  });

  it('are listed in the README exactly as in the table, both ways', async () => {
    let readme = await readFile(README, 'utf8');
    if (process.env.BOLT_UPDATE_DOCS === '1') {
      const start = readme.indexOf(HEADING);
      const intro = readme.slice(start).split('\n\n').slice(0, 2).join('\n\n');
      const after = readme.slice(start + intro.length).search(/\n## /);
      const tail = after === -1 ? '' : readme.slice(start + intro.length + after);
      readme = `${readme.slice(0, start)}${intro}\n\n${renderTable()}\n${tail}`;
      await writeFile(README, readme);
    }
    const documented = documentedCodes(readme);
    expect([...documented.keys()].sort()).to.deep.equal(Object.keys(ERROR_CODES).sort());
    for (const [code, text] of Object.entries(ERROR_CODES)) expect(documented.get(code), code).to.equal(text);
  });
});
