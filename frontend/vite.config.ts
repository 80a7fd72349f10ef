import { defineConfig } from 'vitest/config';

// The backend's public origin in local development (`make dev`: the flylocal edge).
const API_ORIGIN = process.env.SPACEPORT_API ?? 'http://localhost:8080';

export default defineConfig({
  // JSX goes through Vite's own transform (oxc) with React's automatic runtime: no React plugin needed.
  oxc: { jsx: { runtime: 'automatic' } },
  server: {
    proxy: {
      // HTTP API and the WebSocket endpoint (ws: true forwards the upgrade).
      '/api': { target: API_ORIGIN, ws: true },
    },
  },
  build: { outDir: 'dist', emptyOutDir: true },
  test: {
    include: ['test/**/*.test.ts', 'src/**/*.test.ts'],
    environment: 'node',
  },
});
