/**
 * `cellar up` and `cellar down` find the running proxy by this file in `$CELLAR_HOME`. A module of
 * its own: `down` reads it without loading the proxy.
 */
export const proxyPidFileName = 'proxy.pid';
