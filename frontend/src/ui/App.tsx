import { HomePage } from './HomePage';
import { ListPage } from './ListPage';
import { Link, parseRoute, usePathname } from './router';

export function App() {
  const route = parseRoute(usePathname());
  switch (route.page) {
    case 'home':
      return <HomePage />;
    case 'list':
      // The key gives each space its own Replicache and socket, closed when leaving it.
      return <ListPage key={route.spaceID} spaceID={route.spaceID} />;
    case 'not-found':
      return (
        <main className="page" data-testid="not-found">
          <h1>Not found</h1>
          <p>
            Nothing lives at <code>{route.path}</code>. <Link href="/">See all lists</Link>.
          </p>
        </main>
      );
  }
}
