// Ensures the README's configuration reference names every key of the schema.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SCHEMA, type Spec } from '../../../src/config/schema';
import { ROOT } from '../../helpers/crowd';

function keys(fields: Record<string, Spec>, prefix: string): string[] {
  return Object.entries(fields).flatMap(([k, s]) => {
    const key = prefix ? `${prefix}.${k}` : k;
    if (s.kind === 'table') return keys(s.fields, key);
    if (s.kind === 'tables') return keys(s.fields, `${key}[]`);
    return [key];
  });
}

t.test('every config key is documented', async (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const all = keys(SCHEMA, '');
  t.ok(all.length > 20);
  for (const k of all) t.ok(readme.includes('`' + k + '`'), `README documents ${k}`);
});
