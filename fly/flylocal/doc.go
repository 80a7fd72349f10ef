// Package flylocal runs a Spaceport system on one computer the way Fly runs it: each app's machines are child
// processes with Fly's environment, and an edge proxy in front of them honours fly-replay. It emulates exactly
// the parts of Fly's platform the system relies on, no more.
//
// Emulated:
//
//   - Machines. Each configured machine is a process started with FLY_APP_NAME, FLY_MACHINE_ID, FLY_ALLOC_ID,
//     FLY_REGION=local, PRIMARY_REGION=local, FLY_PRIVATE_IP=127.0.0.1 and PORT, plus flylocal's own environment
//     (DATABASE_URL passes through) and the configured env. Machine IDs are 14 hex characters like Fly's and are
//     kept, with the ports, in the state directory, so they survive restarts of flylocal. A machine is "started"
//     once its port accepts connections. A process that exits with an error is restarted with backoff; one that
//     exits with status 0 is stopped (Fly's on-failure restart policy). Stopping sends SIGTERM, then SIGKILL
//     after the app's kill timeout. Supervisor has Start, Stop and State per machine so that a Machines API and
//     idle auto-stop can be built on it.
//   - The edge. Every request on the listen address goes to a started machine of the edge app, round robin,
//     with the request headers Fly adds (Fly-Client-IP, X-Forwarded-For, X-Forwarded-Proto, Fly-Region); a
//     client cannot set Fly-Replay-Src, Fly-Replay-Failed or Fly-Preferred-Instance-Unavailable itself.
//   - fly-replay, header form. A response carrying it is discarded and the original request (method, path,
//     query, headers, body up to MaxReplayBody) is sent to the target it names: app, instance, prefer_instance
//     (else any machine, with Fly-Preferred-Instance-Unavailable), region (only "local" and "any" match),
//     elsewhere (not the machine that answered). The target gets Fly-Replay-Src with instance, region, t and
//     state. A replayed request may be replayed again, MaxReplays times, then error PA02.
//   - Autostart. A stopped target machine is started, and the request waits until it accepts connections,
//     unless its app has autostart off (503).
//   - Idle auto-stop. A started machine of an app with idle_stop (AppConfig.IdleStop) that has had no request
//     and no WebSocket tunnel through the edge for that long is stopped, as auto_stop_machines = "stop" does on
//     Fly (which checks every few minutes; flylocal within a second, and with no minimum of machines running).
//   - WebSockets. An upgrade request is replayed like any other; when the target answers 101 the connection is
//     tunnelled both ways until either side closes.
//   - The Machines API (MachinesAPI), on Config.APIListen: list (with metadata filters), get, create, start,
//     stop, wait, delete, metadata and leases of the machines above, in Fly's shapes, so that the Machines API
//     client (fly/machines) and the ops tools run against flylocal as against Fly. Machines it creates run their
//     app's command and are kept in the state directory. Every machine gets FLY_API_HOSTNAME pointing at it.
//     MachinesAPI.InjectFault makes calls fail as Fly's sometimes do (capacity, lost answers), for tests.
//   - Errors the proxy answers itself are JSON {"error": "...", "code": "PA02"} with the code of Fly's
//     corresponding proxy error: unknown app (PA04) or machine (PR02) 502, invalid fly-replay (PA03) 502, too
//     many replays (PA02) 502, body too large to replay (PA01) 502, no machine can serve (PR01, PR03) 503,
//     machine unreachable (PC01, PU02) 502.
//
// Not emulated: TLS, regions other than "local", the JSON form of fly-replay (application/vnd.fly.replay+json)
// and its transforms, replay caching, the timeout and fallback fields (parsed and validated, then ignored; there
// is no fly-replay-failed), the fly-prefer-region and fly-force-instance-id request headers, concurrency limits
// and load-based autostart, min_machines_running, health checks, 6PN and .internal DNS (machines reach each other only
// through the edge), the parts of the Machines API that MachinesAPI lists as missing, and retries of failed
// connections.
package flylocal
