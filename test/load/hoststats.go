package load

import (
	"fmt"
	"net"
	"net/http"
	"time"
)

// Host counters over HTTP, so kmsload (another process) can read how many
// connections to the host a run took: kmshost -stats ADDR serves them.
//
//	GET  /metrics  Prometheus text: kmshost_connections_accepted_total,
//	               kmshost_connections_open, kmshost_connections_open_peak,
//	               kmshost_connections_used, kmshost_pdus_answered_total
//	POST /reset    start a new window for the peak and used counts
//
// The stats listener is not the host's: scraping it opens no host
// connection.

// ServeStats serves h's counters on addr (loopback only) until h is
// closed or the listener fails; it returns once listening.
func (h *Host) ServeStats(addr string) (net.Listener, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "kmshost_connections_accepted_total %d\n", h.Accepted.Load())
		fmt.Fprintf(w, "kmshost_connections_open %d\n", h.Open.Load())
		fmt.Fprintf(w, "kmshost_connections_open_peak %d\n", h.OpenPeak())
		fmt.Fprintf(w, "kmshost_connections_used %d\n", h.Used())
		fmt.Fprintf(w, "kmshost_pdus_answered_total %d\n", h.Answered.Load())
	})
	mux.HandleFunc("/reset", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		h.ResetWindow()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return ln, nil
}

// HostStats is one reading of a kmshost's counters.
type HostStats struct {
	Accepted, Open, OpenPeak, Used int64
}

// ReadHostStats reads the counters from a kmshost stats address
// (host:port, as given to kmshost -stats).
func ReadHostStats(addr string) (HostStats, error) {
	m, err := Metrics("http://" + addr + "/metrics")
	if err != nil {
		return HostStats{}, err
	}
	return HostStats{
		Accepted: int64(m["kmshost_connections_accepted_total"]),
		Open:     int64(m["kmshost_connections_open"]),
		OpenPeak: int64(m["kmshost_connections_open_peak"]),
		Used:     int64(m["kmshost_connections_used"]),
	}, nil
}

// ResetHostStats starts a new window for the peak and used counts.
func ResetHostStats(addr string) error {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Post("http://"+addr+"/reset", "text/plain", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/reset: %s", addr, resp.Status)
	}
	return nil
}
