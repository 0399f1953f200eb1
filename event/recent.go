package event

import (
	"sort"
	"sync"
	"time"
)

// Notable is one refusal, violation, alert or error as the status page
// lists it. Every string may have come off the wire (a reason never does,
// a source address is parsed, but Message and Detail can quote a client):
// whoever shows it escapes it.
type Notable struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // NotableRefusal, NotableAlert or NotableError
	Action  string    `json:"action"`
	Reason  string    `json:"reason"`
	Source  string    `json:"source"` // source.ip; "" for server-wide events
	Zone    string    `json:"zone"`
	Message string    `json:"message"`
}

// Notable kinds.
const (
	NotableRefusal = "refusal" // the policy or the protocol rules refused something
	NotableAlert   = "alert"   // kmswatch: duplicate CMID, clock skew
	NotableError   = "error"   // upstream unavailable, reload failed, fd budget
)

// Window keys Recent counts besides each refusal's "action/reason".
const (
	WindowConnections = "connections"
	WindowActivations = "activations"
	WindowRefusals    = "refusals"
)

// WindowCount is how often a key was counted in the last minute and the
// last hour.
type WindowCount struct {
	Key    string `json:"key"`
	Minute uint64 `json:"last_minute"`
	Hour   uint64 `json:"last_hour"`
}

// Recent keeps what the status page shows of the last hour: the last
// notable events (a fixed ring) and per-minute counts of connections,
// activations and refusals by action and reason. Memory is bounded: the
// ring by its size, the counts by 60 buckets per key, and keys come from
// fixed token sets (actions, reasons), never from traffic.
type Recent struct {
	mu     sync.Mutex
	ring   []Notable
	next   int
	filled bool
	counts map[string]*minutes
	now    func() time.Time
}

// minutes is one key's counts: bucket i holds the minute whose unix
// minute number is stamp[i].
type minutes struct {
	stamp [60]int64
	n     [60]uint64
}

// NewRecent keeps the last size notable events (0: 50).
func NewRecent(size int) *Recent {
	if size <= 0 {
		size = 50
	}
	return &Recent{ring: make([]Notable, size), counts: make(map[string]*minutes), now: time.Now}
}

// Note records a notable event and counts it under WindowRefusals and its
// "action/reason" key when it is a refusal.
func (r *Recent) Note(n Notable) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n.Time.IsZero() {
		n.Time = r.now()
	}
	r.ring[r.next] = n
	r.next++
	if r.next == len(r.ring) {
		r.next, r.filled = 0, true
	}
	if n.Kind == NotableRefusal {
		r.countLocked(WindowRefusals, n.Time)
		r.countLocked(n.Action+"/"+n.Reason, n.Time)
	}
}

// Count counts one occurrence of key (WindowConnections,
// WindowActivations) now.
func (r *Recent) Count(key string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.countLocked(key, r.now())
	r.mu.Unlock()
}

func (r *Recent) countLocked(key string, t time.Time) {
	m := r.counts[key]
	if m == nil {
		m = new(minutes)
		r.counts[key] = m
	}
	minute := t.Unix() / 60
	i := minute % 60
	if m.stamp[i] != minute {
		m.stamp[i], m.n[i] = minute, 0
	}
	m.n[i]++
}

// Notables returns the recorded notable events, newest first.
func (r *Recent) Notables() []Notable {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.filled {
		n = len(r.ring)
	}
	out := make([]Notable, 0, n)
	for k := 1; k <= n; k++ {
		out = append(out, r.ring[(r.next-k+len(r.ring))%len(r.ring)])
	}
	return out
}

// Windows returns every key counted in the last hour with its counts in
// the current clock minute and the last 60 minutes, sorted by key.
func (r *Recent) Windows() []WindowCount {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now().Unix() / 60
	out := make([]WindowCount, 0, len(r.counts))
	for key, m := range r.counts {
		var wc WindowCount
		wc.Key = key
		for i := range m.stamp {
			age := now - m.stamp[i]
			if age < 0 || age >= 60 {
				continue
			}
			wc.Hour += m.n[i]
			if age == 0 {
				wc.Minute += m.n[i]
			}
		}
		if wc.Hour > 0 {
			out = append(out, wc)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
