package store

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	metricGroupSpaces = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_group_commit_spaces", Help: "Spaces written by one group commit (one Postgres transaction).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11),
	})
	metricGroupBytes = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_group_commit_bytes", Help: "Approximate bytes written by one group commit.",
		Buckets: prometheus.ExponentialBuckets(256, 4, 10),
	})
	metricGroupSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_group_commit_seconds", Help: "Time of one group commit's statement, commit included.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2.5, 12),
	})
	metricGroupAlone = promauto.NewCounter(prometheus.CounterOpts{
		Name: "spaceport_group_commit_alone_total", Help: "Batches a group left to commit alone (their space row was locked elsewhere, or the group was refused).",
	})
)

func observeGroup(reqs []*commitReq, size int, took time.Duration) {
	metricGroupSpaces.Observe(float64(len(reqs)))
	metricGroupBytes.Observe(float64(size))
	metricGroupSeconds.Observe(took.Seconds())
	for _, r := range reqs {
		if errors.Is(r.err, errAlone) {
			metricGroupAlone.Inc()
		}
	}
}
