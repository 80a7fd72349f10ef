// Client-side routes on the History API: "/" lists spaces, "/list/<id>" opens one.

import { useSyncExternalStore, type AnchorHTMLAttributes, type MouseEvent } from 'react';

export type Route = { page: 'home' } | { page: 'list'; spaceID: string } | { page: 'not-found'; path: string };

/** Space IDs as the server accepts them (docs/protocol.md §1). */
export const SPACE_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export function parseRoute(pathname: string): Route {
  if (pathname === '/' || pathname === '') return { page: 'home' };
  const m = /^\/list\/([^/]+)\/?$/.exec(pathname);
  if (m) {
    let id: string;
    try {
      id = decodeURIComponent(m[1]!);
    } catch {
      return { page: 'not-found', path: pathname };
    }
    if (SPACE_ID_PATTERN.test(id)) return { page: 'list', spaceID: id };
  }
  return { page: 'not-found', path: pathname };
}

export function listPath(spaceID: string): string {
  return `/list/${encodeURIComponent(spaceID)}`;
}

const NAVIGATE_EVENT = 'spaceport:navigate';

export function navigate(path: string): void {
  if (path === location.pathname) return;
  history.pushState(null, '', path);
  window.dispatchEvent(new Event(NAVIGATE_EVENT));
}

function subscribe(onChange: () => void): () => void {
  window.addEventListener('popstate', onChange);
  window.addEventListener(NAVIGATE_EVENT, onChange);
  return () => {
    window.removeEventListener('popstate', onChange);
    window.removeEventListener(NAVIGATE_EVENT, onChange);
  };
}

export function usePathname(): string {
  return useSyncExternalStore(subscribe, () => location.pathname);
}

/** An <a> that navigates in the page; modified clicks (new tab, download) keep the browser's behaviour. */
export function Link({ href, onClick, ...rest }: AnchorHTMLAttributes<HTMLAnchorElement> & { href: string }) {
  const handle = (e: MouseEvent<HTMLAnchorElement>) => {
    onClick?.(e);
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return <a href={href} onClick={handle} {...rest} />;
}
