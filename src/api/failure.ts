/**
 * A failed machine's last error as a person reads it. A server that would not start leaves a
 * tail of its log (kilobytes) in the error; the API shows the sentence that matters instead:
 * what failed, and the server's own FATAL or PANIC reason, with advice for the restore failures
 * a user can act on. The full text stays in the cluster's events.
 */

/** Longer than this, the reason is cut: a line, not a dump. */
export const failureTextMax = 400;

/** Postgres's reasons that a restore can fail on, and what to do about each. */
const restoreAdvice: readonly (readonly [RegExp, string])[] = [
  [
    /recovery ended before configured recovery target was reached/,
    'the archive ends before the restore target (no later transaction was archived); restore to an earlier time or position, or to the latest',
  ],
  [/requested timeline \d+ is not a child of this server's history/, 'the restore target lies on another timeline than the backup; pick a backup taken on the target timeline'],
  [/could not locate required checkpoint record/, "the backup's WAL is missing from the archive; restore from another backup"],
];

const serverLinePattern = /\b(?:FATAL|PANIC):\s+(.*)$/;

function shorten(text: string): string {
  return text.length <= failureTextMax ? text : `${text.slice(0, failureTextMax - 1)}…`;
}

export function briefFailure(error: string | null): string | null {
  if (error === null) return null;
  const lines = error.split('\n');
  const serverReasons = lines.flatMap((line) => {
    const match = serverLinePattern.exec(line);
    return match?.[1] === undefined ? [] : [match[1].trim()];
  });
  // The FATAL that ended the server is the last one; earlier ones are connection attempts during its start.
  const reason = serverReasons.at(-1);
  if (reason === undefined) return shorten(error.trim());
  // The data directory's path means nothing to a tenant.
  const headline = (lines[0] ?? '').replace(/postgres -D \S+ /, 'the server ').trim();
  const advice = restoreAdvice.find(([pattern]) => pattern.test(reason))?.[1];
  return shorten(`${headline}: ${reason}${advice === undefined ? '' : `: ${advice}`}`);
}
