import { type JSX, render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './app.css';
import { ClusterPage } from './cluster.js';
import { ClustersPage } from './clusters.js';
import { CreatePage } from './create.js';
import { FlagsPage, FreezePage, HostsPage, RodsPage } from './operator.js';
import { lostSince, resume, session, signIn, signOut, useRoute, useSession } from './session.js';
import { SettingsPage } from './settings.js';
import { Page, messageOf } from './ui.js';

/** The console's shell: sign-in, the navigation, the lost-API banner and the hash routes. */

function SignIn() {
  const [token, setToken] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event): Promise<void> => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(token.trim());
      if (location.hash === '' || location.hash === '#/') location.hash = '#/clusters';
    } catch (thrown) {
      setError(messageOf(thrown));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>Cellar</h1>
      {session.signedOutMessage !== null && <p class="warning" data-testid="signed-out-message">Signed out: {session.signedOutMessage}</p>}
      <form class="form" onSubmit={(event) => void submit(event)}>
        <div class="field">
          <label for="signin-token">Token</label>
          <input id="signin-token" type="password" autoComplete="off" data-testid="signin-token" value={token} onInput={(event) => setToken(event.currentTarget.value)} />
        </div>
        {error !== null && <p class="error" data-testid="signin-error">{error}</p>}
        <button type="submit" class="primary" disabled={busy || token.trim() === ''} data-testid="signin-submit">Sign in</button>
      </form>
    </main>
  );
}

function Banner() {
  const since = lostSince();
  if (since === null) return null;
  return (
    <div class="banner" role="alert" data-testid="lost-banner">
      Lost the API since {since.toLocaleTimeString()}; retrying.
    </div>
  );
}

function OperatorOnly() {
  return (
    <Page title="Operator only">
      <p data-testid="operator-only">This page needs an operator (admin) token.</p>
    </Page>
  );
}

function Routed({ route, admin }: { route: string[]; admin: boolean }) {
  const [first, second, third] = route;
  const operator = (page: () => JSX.Element) => (admin ? page() : <OperatorOnly />);
  if (first === 'new') return <CreatePage />;
  if (first === 'clusters' && second !== undefined && third === 'settings') return <SettingsPage name={second} />;
  if (first === 'clusters' && second !== undefined) return <ClusterPage name={second} />;
  if (first === 'hosts') return operator(() => <HostsPage />);
  if (first === 'flags') return operator(() => <FlagsPage selected={second} />);
  if (first === 'rods') return operator(() => <RodsPage selected={second} />);
  if (first === 'freeze') return operator(() => <FreezePage />);
  return <ClustersPage />;
}

function App() {
  const current = useSession();
  const route = useRoute();
  useEffect(() => {
    void resume();
  }, []);
  if (current.token === null) return <SignIn />;
  const whoami = current.whoami;
  return (
    <>
      <header class="top">
        <a class="brand" href="#/clusters">Cellar</a>
        <nav data-testid="nav">
          <a href="#/clusters" data-testid="nav-clusters">Clusters</a>
          <a href="#/new" data-testid="nav-new">New cluster</a>
          {whoami?.admin === true && (
            <>
              <a href="#/hosts" data-testid="nav-hosts">Hosts</a>
              <a href="#/flags" data-testid="nav-flags">Flags</a>
              <a href="#/rods" data-testid="nav-rods">Rods</a>
              <a href="#/freeze" data-testid="nav-freeze">Freeze</a>
            </>
          )}
        </nav>
        <span class="who" data-testid="who">{whoami === null ? '…' : whoami.admin ? 'operator' : `org ${whoami.org ?? '?'}`}</span>
        <button type="button" class="small" data-testid="sign-out" onClick={() => signOut()}>Sign out</button>
      </header>
      <Banner />
      <main>{whoami === null ? <p class="muted">Checking the token…</p> : <Routed route={route} admin={whoami.admin} />}</main>
    </>
  );
}

const root = document.getElementById('app');
if (root !== null) render(<App />, root);
