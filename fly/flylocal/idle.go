package flylocal

import (
	"context"
	"time"
)

// Bounds of the idle check's period, which is a quarter of the shortest idle_stop.
const (
	minIdleCheck = 50 * time.Millisecond
	maxIdleCheck = time.Second
)

// runIdleStop stops the started machines of apps with an idle_stop once they have served nothing through the
// edge for that long, until ctx is done. It is owned by the Server: Open starts it, Close stops it and waits.
func (s *Server) runIdleStop(ctx context.Context) {
	period := time.Duration(0)
	for _, app := range s.Config.Apps {
		if app.IdleStop > 0 && (period == 0 || time.Duration(app.IdleStop)/4 < period) {
			period = time.Duration(app.IdleStop) / 4
		}
	}
	if period == 0 {
		return
	}
	period = min(max(period, minIdleCheck), maxIdleCheck)
	t := time.NewTicker(period)
	defer t.Stop()
	// idleSince is when each started machine was first seen idle: a machine that was just started, and has
	// not been reached yet, gets its full idle time too.
	idleSince := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		seen := map[string]bool{}
		for _, app := range s.Config.Apps {
			if app.IdleStop <= 0 {
				continue
			}
			for _, m := range s.Supervisor.Machines(app.Name) {
				active, last := s.Proxy.Activity(m.ID)
				if m.State != StateStarted || active > 0 {
					continue
				}
				seen[m.ID] = true
				since, ok := idleSince[m.ID]
				if !ok {
					since = now
					idleSince[m.ID] = now
				}
				if last.After(since) {
					since = last
				}
				if now.Sub(since) < time.Duration(app.IdleStop) {
					continue
				}
				if _, err := s.Supervisor.RequestStop(m.ID); err != nil {
					s.logger.Warn("idle stop", "machine", m.ID, "err", err)
					continue
				}
				s.logger.Info("idle machine stopped (auto stop)", "app", m.App, "machine", m.ID,
					"idle", now.Sub(since).Round(time.Millisecond))
			}
		}
		for id := range idleSince {
			if !seen[id] {
				delete(idleSince, id)
			}
		}
	}
}
