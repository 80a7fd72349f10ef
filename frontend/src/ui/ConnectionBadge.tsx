import { useEffect, useState } from 'react';
import type { ConnectionStatus } from '../sync';

function label(status: ConnectionStatus, now: number, since: number): string {
  switch (status.state) {
    case 'live':
      return 'Live';
    case 'connecting':
      return 'Connecting…';
    case 'offline': {
      if (status.retryInMs === undefined) return 'Offline';
      const left = Math.ceil((status.retryInMs - (now - since)) / 1000);
      return left > 0 ? `Offline · retrying in ${left} s` : 'Offline · retrying';
    }
    case 'error':
      return `Stopped: ${status.reason ?? 'unknown error'}`;
  }
}

/** The connection state, the machine serving the space, and the last sync problem, for people and tests. */
export function ConnectionBadge({ status }: { status: ConnectionStatus }) {
  const [since, setSince] = useState(() => Date.now());
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    setSince(Date.now());
    setNow(Date.now());
    if (status.state !== 'offline' || !status.retryInMs) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [status]);

  return (
    <div className="connection">
      <p
        className={`status status-${status.state}`}
        role="status"
        data-testid="connection-status"
        data-state={status.state}
        title={status.reason}
      >
        <span className="dot" aria-hidden="true" />
        {label(status, now, since)}
      </p>
      {status.machineID && (
        <p className="meta" data-testid="machine">
          Served by machine <code data-testid="machine-id">{status.machineID}</code>
          {status.region && (
            <>
              {' '}
              in <span data-testid="region">{status.region}</span>
            </>
          )}
        </p>
      )}
      {status.lastError && (
        <p className="notice warn" data-testid="sync-error">
          Sync problem: {status.lastError}
        </p>
      )}
    </div>
  );
}
