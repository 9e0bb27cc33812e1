import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** `$CELLAR_HOME/credentials`: where the CLI finds the API and its token. Mode 0600. */
export const credentialsFileName = 'credentials';

export interface Credentials {
  readonly api: string;
  readonly token: string;
}

export async function readCredentials(home: string): Promise<Credentials | null> {
  try {
    const parsed = JSON.parse(await readFile(join(home, credentialsFileName), 'utf8')) as Partial<Credentials>;
    return typeof parsed.api === 'string' && typeof parsed.token === 'string' ? { api: parsed.api, token: parsed.token } : null;
  } catch {
    return null;
  }
}

export async function writeCredentials(home: string, credentials: Credentials): Promise<void> {
  await writeFile(join(home, credentialsFileName), `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
}
