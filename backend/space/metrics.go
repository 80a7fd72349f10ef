package space

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	metricSpacesLoaded = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "spaceport_spaces_loaded", Help: "Spaces held in memory by this process.",
	})
	metricSpacesLost = promauto.NewCounter(prometheus.CounterOpts{
		Name: "spaceport_spaces_lost_total", Help: "Spaces this process lost to another owner (fenced commits).",
	})
	metricLoadSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_space_load_seconds", Help: "Time to claim and load a space from Postgres.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
	})
	metricCommitSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_batch_seconds", Help: "Time to run a batch's mutators and commit it.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2.5, 12),
	})
	metricQueueWait = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_push_queue_wait_seconds", Help: "Time a push waited for the space's writer.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 3, 10),
	})
	metricBatchMutations = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_batch_mutations", Help: "Mutations applied per committed batch (group commit size).",
		Buckets: prometheus.ExponentialBuckets(1, 4, 8),
	})
	metricCommits = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "spaceport_commits_total", Help: "Batch commits by result.",
	}, []string{"result"})
	metricMutations = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "spaceport_mutations_total", Help: "Mutations run by result (ok, error: permanent mutator failure, unknown: no such mutator).",
	}, []string{"result"})
)
