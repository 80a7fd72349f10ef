package directory

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ownConnectTimeout bounds connecting a connection of our own (ownConn) when
// the pool's configuration sets no connect timeout.
const ownConnectTimeout = 10 * time.Second

// ownCloseTimeout bounds closing a connection of our own.
const ownCloseTimeout = 5 * time.Second

// ownConn opens a connection outside the pool, with the pool's settings and
// application name app (to find it in pg_stat_activity): for what holds a
// connection for long or ties state to its session, LISTEN and session
// advisory locks. closeConn closes it with a bounded wait.
func (d *Directory) ownConn(ctx context.Context, app string) (conn *pgx.Conn, closeConn func(), err error) {
	cc := d.pool.Config().ConnConfig.Copy()
	cc.RuntimeParams["application_name"] = app
	if cc.ConnectTimeout <= 0 {
		cc.ConnectTimeout = ownConnectTimeout
	}
	conn, err = pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, nil, fmt.Errorf("connect: %w", err)
	}
	return conn, func() {
		cctx, cancel := context.WithTimeout(context.Background(), ownCloseTimeout)
		defer cancel()
		_ = conn.Close(cctx)
	}, nil
}

// listenPingTimeout bounds the round trip that checks a silent listener
// connection.
const listenPingTimeout = 5 * time.Second

// Listen follows placement changes until ctx is done, on a dedicated
// connection (LISTEN cannot share a pooled one). onChange gets the ID of each
// space that was created, moved or deleted. onReset is called every time the
// LISTEN is established, first and after each reconnect: changes made while
// not listening were not heard, so the caller must drop everything it cached
// before that moment. (The first call thus also tells the caller that it is
// now listening.) onLost is called when an established LISTEN ends with the
// error that ended it: until the next onReset, changes go unheard.
//
// A lost connection is replaced with capped, jittered exponential backoff
// (Config.ListenRetryMin to ListenRetryMax), and a connection that has been
// silent for Config.ListenPingInterval is checked with a round trip. The
// callbacks (nil means none) run on Listen's goroutine, one at a time, and
// must not block long. Listen blocks; run it in a goroutine whose owner
// cancels ctx.
func (d *Directory) Listen(ctx context.Context, onChange func(spaceID string), onReset func(), onLost func(error)) {
	if onChange == nil {
		onChange = func(string) {}
	}
	if onReset == nil {
		onReset = func() {}
	}
	if onLost == nil {
		onLost = func(error) {}
	}
	backoff := d.cfg.ListenRetryMin
	for {
		established, err := d.listenOnce(ctx, onChange, onReset)
		if ctx.Err() != nil {
			return
		}
		if established {
			onLost(err)
			backoff = d.cfg.ListenRetryMin
		}
		// Full jitter, so many routers cut off at once do not all return at once.
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		d.log.Warn("directory: listener not connected, retrying", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, d.cfg.ListenRetryMax)
	}
}

// listenOnce connects, listens and delivers notifications until the
// connection fails or ctx is done. established reports whether LISTEN took
// effect (and onReset was called).
func (d *Directory) listenOnce(ctx context.Context, onChange func(string), onReset func()) (established bool, err error) {
	conn, closeConn, err := d.ownConn(ctx, ListenApplicationName)
	if err != nil {
		return false, err
	}
	defer closeConn()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{NotifyChannel}.Sanitize()); err != nil {
		return false, fmt.Errorf("listen: %w", err)
	}
	onReset()
	for {
		wctx, cancel := context.WithTimeout(ctx, d.cfg.ListenPingInterval)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			onChange(n.Payload)
		case ctx.Err() != nil:
			return true, ctx.Err()
		case pgconn.Timeout(err) && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, listenPingTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return true, fmt.Errorf("ping: %w", err)
			}
		default:
			return true, fmt.Errorf("wait for notification: %w", err)
		}
	}
}
