package kmswatch

import (
	"container/list"
	"context"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// Watch remembers recent client machine IDs to spot clones and
// spoofing: the same CMID from another source or workstation within the
// window. Memory is bounded by KMSWatch.MaxTracked (oldest evicted). It is
// safe for concurrent use.
type Watch struct {
	mu     sync.Mutex
	byID   map[rpcparse.UUID]*list.Element
	order  *list.List // front = most recent
	shared Shared     // nil: the local table alone decides
}

// Seen is where and when a client machine ID was last seen.
type Seen struct {
	Source      netip.Addr
	Workstation string
	Time        time.Time
}

// Shared is a duplicate-CMID table the replicas share (package state).
// SeenCMID records cmid as seen now from src and workstation, for window,
// and returns the observation it replaced when that one came from another
// source or workstation (dup). An error means it has no answer: the local
// table's applies.
type Shared interface {
	SeenCMID(ctx context.Context, cmid rpcparse.UUID, src netip.Addr, workstation string, window time.Duration, now time.Time) (prev Seen, dup bool, err error)
}

// SetShared makes the shared table the one that decides, the local one
// kept beside it, up to date, for when the shared one fails. Call it
// before the first Observe.
func (w *Watch) SetShared(s Shared) { w.shared = s }

type cmidSeen struct {
	cmid        rpcparse.UUID
	src         netip.Addr
	workstation string
	seen        time.Time
}

// New returns an empty watch.
func New() *Watch {
	return &Watch{byID: make(map[rpcparse.UUID]*list.Element), order: list.New()}
}

// Observe runs the detectors on one decoded, allowed activation request
// from src, allowed by rule, under cfg: a kms-clock-skew alert when the
// client's clock is off by more than cfg.MaxClockSkew, a
// kms-duplicate-cmid alert when its CMID was seen within
// cfg.DuplicateWindow from another source or workstation. Alerts go to em
// (the connection's emitter) and are counted as decisions.
func (w *Watch) Observe(em event.Emitter, cfg config.KMSWatch, src netip.Addr, r *kms.Request, rule string) {
	now := time.Now()
	if skew := now.Sub(r.Time()); cfg.MaxClockSkew > 0 && (skew > cfg.MaxClockSkew || -skew > cfg.MaxClockSkew) {
		ev := event.New(event.ActionKMSClockSkew, event.OutcomeUnknown, event.ReasonClockSkew)
		ev.Add(zap.String("rule.name", rule), zap.Duration("kms.clock_skew", skew),
			zap.String("kms.client_machine_id", r.CMID.String()), zap.String("kms.workstation", r.Workstation()),
			event.ClientTime(r))
		em.Decision(zap.WarnLevel, event.ActionKMSClockSkew, ev)
	}
	if cfg.MaxTracked <= 0 {
		return
	}
	ws := r.Workstation()
	w.mu.Lock()
	var prev Seen
	dup := false
	if e, ok := w.byID[r.CMID]; ok {
		old := e.Value.(*cmidSeen)
		if now.Sub(old.seen) <= cfg.DuplicateWindow && (old.src != src || old.workstation != ws) {
			prev, dup = Seen{Source: old.src, Workstation: old.workstation, Time: old.seen}, true
		}
		old.src, old.workstation, old.seen = src, ws, now
		w.order.MoveToFront(e)
	} else {
		w.byID[r.CMID] = w.order.PushFront(&cmidSeen{cmid: r.CMID, src: src, workstation: ws, seen: now})
		for w.order.Len() > cfg.MaxTracked {
			last := w.order.Back()
			delete(w.byID, last.Value.(*cmidSeen).cmid)
			w.order.Remove(last)
		}
	}
	w.mu.Unlock()
	if w.shared != nil {
		// Every replica's observations: it decides when it answers.
		if p, d, err := w.shared.SeenCMID(context.Background(), r.CMID, src, ws, cfg.DuplicateWindow, now); err == nil {
			prev, dup = p, d
		}
	}
	if dup {
		ev := event.New(event.ActionKMSDuplicateCMID, event.OutcomeUnknown, event.ReasonDuplicateCMID)
		ev.Add(zap.String("rule.name", rule),
			zap.String("kms.client_machine_id", r.CMID.String()), zap.String("kms.workstation", ws),
			zap.String("kmsproxy.previous.source_ip", prev.Source.String()),
			zap.String("kmsproxy.previous.workstation", prev.Workstation),
			zap.Time("kmsproxy.previous.seen", prev.Time))
		em.Decision(zap.WarnLevel, event.ActionKMSDuplicateCMID, ev)
	}
}
