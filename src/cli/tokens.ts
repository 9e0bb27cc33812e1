import type { Command } from 'commander';
import type { TokenView, TokenWithSecret } from '../api/tokens.js';
import { loadConfig } from '../config.js';
import { readCredentials, writeCredentials } from '../lib/credentials.js';
import type { ApiClient } from './client.js';
import { type Output, formatTable } from './output.js';

/** `cellar tokens …`: create, list, revoke and rotate bearer tokens, each with --json. */

const durationUnitsSeconds: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3_600, d: 86_400, w: 604_800 };

/** `90`, `90s`, `15m`, `12h`, `30d`, `2w` → seconds; the API checks the range. */
export function parseDuration(text: string): number {
  const match = /^(\d{1,10})([smhdw]?)$/.exec(text.trim());
  if (match === null) throw new Error(`--expires-in ${text}: must be a whole number with an optional unit s, m, h, d or w (e.g. 30d)`);
  return Number(match[1]) * (durationUnitsSeconds[match[2] || 's'] ?? 1);
}

function graceOption(text: string): number {
  return parseDuration(text);
}

function row(token: TokenView): string[] {
  return [
    `${token.id}${token.current ? ' *' : ''}`,
    token.name ?? '-',
    token.org,
    token.admin ? 'yes' : 'no',
    token.status,
    token.createdAt,
    token.expiresAt ?? 'never',
    token.lastUsedAt ?? '-',
  ];
}

function printSecret(out: Output, token: TokenWithSecret, verb: string): void {
  if (out.json) return out.result(token);
  out.line(`${verb} token ${token.id}${token.name === null ? '' : ` (${token.name})`} for org ${token.org}${token.admin ? ', admin' : ''}, expires ${token.expiresAt ?? 'never'}`);
  out.line(`  secret  ${token.secret}`);
  out.line('Keep the secret now: it is not shown again (only its hash is stored).');
}

export function registerTokenCommands(program: Command, connect: () => Promise<{ client: ApiClient; out: Output }>): void {
  const tokens = program.command('tokens').description('create, list, revoke and rotate API tokens');

  tokens
    .command('create')
    .description('create a token; its secret is printed once')
    .option('--org <name>', "the org it acts for (default: this token's org; another org needs an admin token)")
    .option('--admin', 'an admin token (needs an admin token)')
    .option('--name <label>', 'a label to recognise it by in the list')
    .option('--expires-in <duration>', 'expire after this long: 3600, 90s, 15m, 12h, 30d, 2w')
    .option('--expires-at <time>', 'expire at this ISO 8601 time with a zone (e.g. 2030-01-31T12:00:00Z)')
    .option('--json', 'print JSON')
    .action(async (options: { org?: string; admin?: boolean; name?: string; expiresIn?: string; expiresAt?: string }) => {
      if (options.expiresIn !== undefined && options.expiresAt !== undefined) throw new Error('give --expires-in or --expires-at, not both');
      const { client, out } = await connect();
      const body = {
        ...(options.org === undefined ? {} : { org: options.org }),
        ...(options.admin === true ? { admin: true } : {}),
        ...(options.name === undefined ? {} : { name: options.name }),
        ...(options.expiresIn === undefined ? {} : { expiresInSeconds: parseDuration(options.expiresIn) }),
        ...(options.expiresAt === undefined ? {} : { expiresAt: options.expiresAt }),
      };
      printSecret(out, await client.request<TokenWithSecret>('POST', '/v1/tokens', body), 'created');
    });

  tokens
    .command('list')
    .description("the org's tokens (an admin token: every org's); * marks the token in use")
    .option('--org <name>', 'only this org (admin)')
    .option('--json', 'print JSON')
    .action(async (options: { org?: string }) => {
      const { client, out } = await connect();
      const query = options.org === undefined ? '' : `?org=${encodeURIComponent(options.org)}`;
      const { tokens: list } = await client.request<{ tokens: TokenView[] }>('GET', `/v1/tokens${query}`);
      if (out.json) return out.result(list);
      out.line(formatTable(['ID', 'NAME', 'ORG', 'ADMIN', 'STATUS', 'CREATED', 'EXPIRES', 'LAST USED'], list.map(row)));
    });

  tokens
    .command('revoke <id>')
    .description('revoke a token: refused from its next request on')
    .option('--force', 'revoke even the token this command runs with (it is then locked out)')
    .option('--json', 'print JSON')
    .action(async (id: string, options: { force?: boolean }) => {
      const { client, out } = await connect();
      const revoked = await client.request<TokenView>('DELETE', `/v1/tokens/${encodeURIComponent(id)}${options.force === true ? '?force=true' : ''}`);
      if (out.json) return out.result(revoked);
      out.line(`revoked token ${revoked.id} at ${revoked.revokedAt ?? '?'}`);
    });

  tokens
    .command('rotate <id>')
    .description('give a token a new secret (printed once); the old one is refused after --grace')
    .option('--grace <duration>', 'how long the old secret keeps working (0 to 1d)', graceOption, 0)
    .option('--force', 'rotate even the token this command runs with, without a grace (the credentials file is updated)')
    .option('--json', 'print JSON')
    .action(async (id: string, options: { grace: number; force?: boolean }) => {
      const { client, out } = await connect();
      const rotated = await client.request<TokenWithSecret>('POST', `/v1/tokens/${encodeURIComponent(id)}/rotate`, { graceSeconds: options.grace, force: options.force === true });
      if (rotated.current) await replaceStoredSecret(rotated.secret, out);
      printSecret(out, rotated, 'rotated');
    });
}

/** The CLI rotated its own token: when that came from the credentials file, the file gets the new secret. */
async function replaceStoredSecret(secret: string, out: Output): Promise<void> {
  const config = loadConfig();
  const stored = await readCredentials(config.home);
  if (config.token !== null || stored === null) return;
  await writeCredentials(config.home, { api: stored.api, token: secret });
  out.progress(`updated ${config.home}/credentials with the new secret`);
}
