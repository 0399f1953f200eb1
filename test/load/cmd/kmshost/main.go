// Command kmshost is a lean KMS host stand-in for load tests: it answers
// binds, alter_contexts and requests with the replies recorded in
// testdata/kms (at the module root), call ids patched, as fast as it can.
//
//	go run ./test/load/cmd/kmshost -listen 127.0.0.1:21688 [-stats 127.0.0.1:21693]
//
// With -stats it serves its connection counters (accepted, open, peak
// open and distinct connections used since the last POST /reset) as
// Prometheus text on http://ADDR/metrics, for kmsload -host-stats.
//
// It only listens on loopback and stops on SIGINT/SIGTERM, or after -for.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kmsproxy/kmsproxy/test/load"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:21688", "loopback address to listen on")
	dir := flag.String("captures", load.DefaultCaptureDir(), "directory of *.c2s.hex / *.s2c.hex captures")
	prefer := flag.String("capture", "win10-v6", "capture whose replies win where captures share a request")
	life := flag.Duration("for", 24*time.Hour, "exit after this long")
	stats := flag.String("stats", "", "loopback address to serve connection counters on (GET /metrics, POST /reset)")
	flag.Parse()
	caps, err := load.LoadCaptures(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmshost:", err)
		os.Exit(1)
	}
	h, err := load.StartHost(*listen, caps, *prefer)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmshost:", err)
		os.Exit(1)
	}
	fmt.Printf("kmshost listening on %s (pid %d)\n", h.Addr(), os.Getpid())
	if *stats != "" {
		ln, err := h.ServeStats(*stats)
		if err != nil {
			h.Close()
			fmt.Fprintln(os.Stderr, "kmshost:", err)
			os.Exit(1)
		}
		defer ln.Close()
		fmt.Printf("kmshost counters on http://%s/metrics\n", ln.Addr())
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case <-time.After(*life):
	}
	h.Close()
	fmt.Printf("kmshost: %d connections, %d PDUs answered\n", h.Accepted.Load(), h.Answered.Load())
}
