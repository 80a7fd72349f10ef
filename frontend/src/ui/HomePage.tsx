import { useEffect, useState } from 'react';
import { createSpace, listSpaces, type SpaceInfo } from './api';
import { Link, listPath, navigate } from './router';

type Load = { state: 'loading' } | { state: 'error'; message: string } | { state: 'ready'; spaces: SpaceInfo[] };

export function HomePage() {
  const [load, setLoad] = useState<Load>({ state: 'loading' });
  const [creating, setCreating] = useState(false);
  const [createError, setCreateError] = useState<string>();
  const [reloads, setReloads] = useState(0);

  useEffect(() => {
    document.title = 'Lists · Spaceport';
    const abort = new AbortController();
    setLoad({ state: 'loading' });
    listSpaces(abort.signal)
      .then((spaces) => setLoad({ state: 'ready', spaces }))
      .catch((e: Error) => {
        if (!abort.signal.aborted) setLoad({ state: 'error', message: e.message });
      });
    return () => abort.abort();
  }, [reloads]);

  async function create() {
    setCreating(true);
    setCreateError(undefined);
    try {
      const space = await createSpace();
      navigate(listPath(space.id));
    } catch (e) {
      setCreateError((e as Error).message);
      setCreating(false);
    }
  }

  return (
    <main className="page">
      <header className="page-header">
        <h1>Lists</h1>
        <button type="button" className="primary" data-testid="create-space" onClick={create} disabled={creating}>
          {creating ? 'Creating…' : 'New list'}
        </button>
      </header>
      {createError && (
        <p className="notice error" role="alert" data-testid="create-space-error">
          Could not create a list: {createError}
        </p>
      )}
      {load.state === 'loading' && <p aria-busy="true">Loading lists…</p>}
      {load.state === 'error' && (
        <p className="notice error" role="alert" data-testid="spaces-error">
          Could not load the lists: {load.message}{' '}
          <button type="button" onClick={() => setReloads((n) => n + 1)}>
            Try again
          </button>
        </p>
      )}
      {load.state === 'ready' &&
        (load.spaces.length === 0 ? (
          <p data-testid="spaces-empty">No lists yet. Create one to start.</p>
        ) : (
          <ul className="spaces" data-testid="space-list" aria-label="Lists">
            {load.spaces.map((s) => (
              <li key={s.id} data-testid="space-item" data-space-id={s.id}>
                <Link href={listPath(s.id)} data-testid="space-link">
                  {s.id}
                </Link>
                <span className="meta">
                  on <span data-testid="space-machine">{s.machine}</span>
                  {s.createdAt && <> · created {new Date(s.createdAt).toLocaleString()}</>}
                </span>
              </li>
            ))}
          </ul>
        ))}
    </main>
  );
}
