package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// healthcheckTimeout bounds the whole check, so a wedged management listener
// fails the container health check instead of hanging it.
const healthcheckTimeout = 2 * time.Second

// defaultHealthURL is /healthz on the default management listener.
const defaultHealthURL = "http://127.0.0.1:9464/healthz"

func init() {
	subcommands = append(subcommands, newHealthcheckCommand)
}

// newHealthcheckCommand is the container HEALTHCHECK: the runtime image has
// no shell and no curl, so the binary checks itself.
func newHealthcheckCommand() *cobra.Command {
	var url string
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 if the management /healthz answers 200 within 2s, else 1",
		Long: `Healthcheck GETs the management listener's /healthz (default
` + defaultHealthURL + `; when KMSPROXY_MANAGEMENT_LISTEN is set, that
address on loopback) and exits 0 on 200 OK, 1 otherwise. It is the image's
HEALTHCHECK: the runtime image has no shell or curl.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				url = healthURL(os.Getenv("KMSPROXY_MANAGEMENT_LISTEN"))
			}
			if err := healthcheck(cmd.Context(), url); err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "health URL (default "+defaultHealthURL+")")
	return cmd
}

// healthURL turns a management listen address into a loopback /healthz URL;
// a wildcard host is reached on loopback.
func healthURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if listen == "" || err != nil || port == "" || port == "0" {
		return defaultHealthURL
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz"
}

func healthcheck(ctx context.Context, url string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// No proxy from the environment: the check is always local.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("healthcheck: %s: no answer within %v", url, healthcheckTimeout)
		}
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s: %s", url, resp.Status)
	}
	return nil
}
