package kmswatch

import (
	"container/list"
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
	mu    sync.Mutex
	byID  map[rpcparse.UUID]*list.Element
	order *list.List // front = most recent
}

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
	var prev cmidSeen
	dup := false
	if e, ok := w.byID[r.CMID]; ok {
		old := e.Value.(*cmidSeen)
		if now.Sub(old.seen) <= cfg.DuplicateWindow && (old.src != src || old.workstation != ws) {
			prev, dup = *old, true
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
	if dup {
		ev := event.New(event.ActionKMSDuplicateCMID, event.OutcomeUnknown, event.ReasonDuplicateCMID)
		ev.Add(zap.String("rule.name", rule),
			zap.String("kms.client_machine_id", r.CMID.String()), zap.String("kms.workstation", ws),
			zap.String("kmsproxy.previous.source_ip", prev.src.String()),
			zap.String("kmsproxy.previous.workstation", prev.workstation),
			zap.Time("kmsproxy.previous.seen", prev.seen))
		em.Decision(zap.WarnLevel, event.ActionKMSDuplicateCMID, ev)
	}
}
