package state

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kmsproxy/kmsproxy/kmswatch"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// maxWorkstation bounds the workstation name kept per CMID (the decoder
// already bounds it to 64 UTF-16 units; this bounds a misbehaving caller).
const maxWorkstation = 512

// SeenCMID records cmid as seen now from src under workstation, for
// window, in the table every replica shares, and returns the observation
// it replaced when that one came from another source or workstation
// (dup): one SET <prefix>cmid:<cmid> "<unix ms> <source> <workstation>"
// PX window GET round trip within state.redis.timeout. The key expires a
// window after the last observation, as the local table forgets it. An
// error is no answer: the local table decides.
func (s *Shared) SeenCMID(ctx context.Context, cmid rpcparse.UUID, src netip.Addr, workstation string, window time.Duration, now time.Time) (kmswatch.Seen, bool, error) {
	ctx, cancel, err := s.begin(ctx, OpCMID)
	if err != nil {
		return kmswatch.Seen{}, false, err
	}
	defer cancel()
	src = src.Unmap()
	if len(workstation) > maxWorkstation {
		workstation = workstation[:maxWorkstation]
	}
	b := make([]byte, 0, 64+len(workstation))
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, ' ')
	b = src.AppendTo(b)
	b = append(b, ' ')
	b = append(b, workstation...)
	t0 := time.Now()
	old, err := s.c.SetArgs(ctx, s.prefix+"cmid:"+cmid.String(), b, redis.SetArgs{Get: true, TTL: window}).Result()
	s.m.secCMID.Observe(time.Since(t0).Seconds())
	switch {
	case errors.Is(err, redis.Nil):
		return kmswatch.Seen{}, false, nil // first seen (within the window)
	case err != nil:
		return kmswatch.Seen{}, false, s.failed(OpCMID, err)
	}
	prev, ok := parseSeen(old)
	if !ok || (prev.Source == src && prev.Workstation == workstation) {
		// The same machine again, or a value that is not ours: no alert.
		return kmswatch.Seen{}, false, nil
	}
	return prev, true, nil
}

// parseSeen reads "<unix ms> <source> <workstation>".
func parseSeen(v string) (kmswatch.Seen, bool) {
	ms, rest, ok := strings.Cut(v, " ")
	if !ok {
		return kmswatch.Seen{}, false
	}
	addr, ws, ok := strings.Cut(rest, " ")
	if !ok {
		return kmswatch.Seen{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return kmswatch.Seen{}, false
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return kmswatch.Seen{}, false
	}
	return kmswatch.Seen{Source: a, Workstation: ws, Time: time.UnixMilli(n)}, true
}
