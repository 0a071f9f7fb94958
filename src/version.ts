import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** crowd's version, from package.json (dist/src/version.js sits two levels below it). */
export const VERSION: string = (JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
