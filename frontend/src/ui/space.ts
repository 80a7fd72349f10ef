// One open space: its Replicache replica and the WebSocket transport feeding it.

import { useCallback, useEffect, useState, useSyncExternalStore } from 'react';
import { Replicache, type ReadTransaction } from 'replicache';
import { mutators, type Mutators } from '../mutators';
import { ReplicacheSocket, type ConnectionStatus } from '../sync';
import { devToken } from './token';

/** The schema of the client view and mutator arguments; the server refuses other versions. */
export const SCHEMA_VERSION = '1';

export interface Space {
  rep: Replicache<Mutators>;
  socket: ReplicacheSocket;
}

/** Opens the space for as long as the calling component is mounted (local replica first, then the socket). */
export function useSpace(spaceID: string): Space | undefined {
  const [space, setSpace] = useState<Space>();
  useEffect(() => {
    const socket = new ReplicacheSocket({ spaceID, getToken: devToken });
    const rep = new Replicache({
      // One local database per space (and per browser profile); Replicache adds its own version suffixes.
      name: `spaceport-list-${spaceID}`,
      schemaVersion: SCHEMA_VERSION,
      mutators,
      puller: socket.puller,
      pusher: socket.pusher,
    });
    socket.attach(rep);
    setSpace({ rep, socket });
    return () => {
      socket.close();
      void rep.close();
      setSpace(undefined);
    };
  }, [spaceID]);
  return space;
}

const NOT_OPEN: ConnectionStatus = { state: 'connecting' };

export function useConnectionStatus(socket: ReplicacheSocket | undefined): ConnectionStatus {
  const subscribe = useCallback((onChange: () => void) => socket?.subscribe(onChange) ?? (() => {}), [socket]);
  return useSyncExternalStore(subscribe, () => socket?.getStatus() ?? NOT_OPEN);
}

/** The result of `query`, kept current by a Replicache subscription; `initial` until the first result. */
export function useQuery<R>(
  rep: Replicache<Mutators> | undefined,
  query: (tx: ReadTransaction) => Promise<R>,
  initial: R,
): R {
  const [value, setValue] = useState<R>(initial);
  useEffect(() => {
    if (!rep) return;
    return rep.subscribe(query, { onData: setValue });
    // The query is fixed per call site; only a new replica restarts the subscription.
  }, [rep]);
  return value;
}
