package wsserver

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	metricConnections = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "spaceport_connections", Help: "Open WebSocket connections.",
	})
	metricCloses = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "spaceport_connection_closes_total", Help: "Connections closed by the server, by close code.",
	}, []string{"code"})
	metricFramesIn = promauto.NewCounter(prometheus.CounterOpts{
		Name: "spaceport_frames_received_total", Help: "Frames received from clients.",
	})
	metricBytesOut = promauto.NewCounter(prometheus.CounterOpts{
		Name: "spaceport_sent_bytes_total", Help: "Bytes of frames written to clients.",
	})
	metricPokes = promauto.NewCounter(prometheus.CounterOpts{
		Name: "spaceport_pokes_total", Help: "Pokes sent.",
	})
	metricPokeBytes = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "spaceport_poke_bytes", Help: "Size of pokes sent.",
		Buckets: prometheus.ExponentialBuckets(64, 4, 10),
	})
)
