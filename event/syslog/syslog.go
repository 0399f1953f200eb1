package syslog

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// Syslog sink defaults. Each bounds what a slow or dead collector can cost.
const (
	DefaultQueue        = 4096             // events held for the writer; beyond this they are dropped
	DefaultDialTimeout  = 5 * time.Second  // a collector that does not answer SYNs
	DefaultWriteTimeout = 5 * time.Second  // a collector that accepts and never reads
	DefaultMaxBackoff   = 30 * time.Second // reconnect attempts against a dead collector
	DefaultWarnInterval = 10 * time.Second // at most one drop warning per interval
	DefaultFlushTimeout = 2 * time.Second  // Close waits this long for queued events
	// MaxMessage is the largest message sent (the IPv4 UDP payload
	// limit); longer JSON messages are cut at a UTF-8 boundary and marked.
	MaxMessage = 65507

	minSyslogBackoff = 250 * time.Millisecond
	maxSDValue       = 1024 // bytes of one structured-data value (the JSON MSG is whole)
	facilityLocal0   = 16
	syslogAppName    = "kmsproxy"
	// sdID names our structured-data element: 32473 is the IANA private
	// enterprise number reserved for documentation (RFC 5612).
	sdID = "kmsproxy@32473"
)

// Options configure a sink. Zero values take the defaults above.
type Options struct {
	Address    string // udp://host:port, tcp://host:port or tls://host:port
	Format     string // rfc5424 (default) or cef
	Level      string // lowest level shipped (debug, info, warn, error); default info
	CAFile     string // PEM roots for tls://; default: the system pool
	CertFile   string // PEM client certificate for tls://
	KeyFile    string
	ServerName string // name verified in the collector's certificate; default: the address host
	QueueSize  int
	Facility   int    // 0..23; default 16 (local0)
	Hostname   string // RFC 5424 HOSTNAME and CEF dvchost; default os.Hostname()
	Version    string // CEF Device Version; default "dev"

	TLSConfig    *tls.Config // used instead of CAFile/CertFile/KeyFile when set
	DialTimeout  time.Duration
	WriteTimeout time.Duration
	MaxBackoff   time.Duration
	WarnInterval time.Duration
	FlushTimeout time.Duration
}

// OptionsFromConfig maps the config's log: block onto options.
func OptionsFromConfig(l config.Log, version string) Options {
	s := l.Syslog
	return Options{
		Address: s.Address, Format: s.Format, Level: l.Level,
		CAFile: s.CAFile, CertFile: s.CertFile, KeyFile: s.KeyFile, ServerName: s.ServerName,
		QueueSize: s.QueueSize, Version: version,
	}
}

// Drops is what the sink reports about dropped events: counts since
// the previous report, by cause.
type Drops struct {
	QueueFull    uint64 // the writer was behind by QueueSize events
	Disconnected uint64 // no connection to the collector
	SendFailed   uint64 // the write failed or timed out
	LastError    string // why the connection was last lost, if it was
}

// Total is the number of events dropped.
func (d Drops) Total() uint64 { return d.QueueFull + d.Disconnected + d.SendFailed }

// Stats are the sink's running totals.
type Stats struct {
	Sent, Dropped, Connects uint64
	Connected               bool
}

// Errors from NewSink.
var (
	ErrAddress = errors.New("syslog: bad address")
	ErrTLS     = errors.New("syslog: bad TLS settings")
	ErrOption  = errors.New("syslog: bad option")
)

// Sink is the queue and the writer goroutine behind the core.
type Sink struct {
	opts    Options
	network string // udp, tcp, tls
	addr    string
	tlsConf *tls.Config
	f       syslogFormatter

	queue   chan syslogEntry
	up      atomic.Bool // false while there is no connection: Write drops
	closed  atomic.Bool
	dropped prometheus.Counter
	warn    func(Drops)

	full, down, failed   atomic.Uint64 // unreported drops by cause
	sent, total, connect atomic.Uint64
	lastErr              atomic.Pointer[string]

	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once

	conn     net.Conn                 // owned by the writer goroutine
	deadline time.Time                // while flushing at Close: no write may end later
	live     atomic.Pointer[net.Conn] // conn, for Close to cut a blocked write short
}

type syslogEntry struct {
	level zapcore.Level
	time  time.Time
	json  []byte // one ECS JSON object, no line ending
}

// NewSink validates opts, loads TLS material and starts the writer,
// which connects in the background: a collector that is down at startup
// is not an error. dropped counts every dropped event (may be nil); warn
// (may be nil) is called from the writer at most once per WarnInterval when
// events were dropped. The returned core is to be teed beside stdout.
func NewSink(opts Options, dropped prometheus.Counter, warn func(Drops)) (*Sink, zapcore.Core, error) {
	u, err := url.Parse(opts.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %q: %w", ErrAddress, opts.Address, err)
	}
	host, _, err := net.SplitHostPort(u.Host)
	if err != nil || u.Path != "" && u.Path != "/" {
		return nil, nil, fmt.Errorf("%w: %q: want udp://, tcp:// or tls://host:port", ErrAddress, opts.Address)
	}
	s := &Sink{network: u.Scheme, addr: u.Host, dropped: dropped, warn: warn}
	switch u.Scheme {
	case "udp", "tcp":
	case "tls":
		if s.tlsConf, err = syslogTLSConfig(&opts, host); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("%w: scheme %q: want udp, tcp or tls", ErrAddress, u.Scheme)
	}
	var lvl zapcore.Level = zapcore.InfoLevel
	if opts.Level != "" {
		if err := lvl.UnmarshalText([]byte(opts.Level)); err != nil {
			return nil, nil, fmt.Errorf("%w: level %q: %w", ErrOption, opts.Level, err)
		}
	}
	switch opts.Format {
	case "", "rfc5424":
		opts.Format = "rfc5424"
	case "cef":
	default:
		return nil, nil, fmt.Errorf("%w: format %q: want rfc5424 or cef", ErrOption, opts.Format)
	}
	if opts.Facility < 0 || opts.Facility > 23 {
		return nil, nil, fmt.Errorf("%w: facility %d: want 0..23", ErrOption, opts.Facility)
	}
	if opts.Facility == 0 {
		// 0 (kern) belongs to the kernel; an unset facility means local0.
		opts.Facility = facilityLocal0
	}
	defaultDuration(&opts.DialTimeout, DefaultDialTimeout)
	defaultDuration(&opts.WriteTimeout, DefaultWriteTimeout)
	defaultDuration(&opts.MaxBackoff, DefaultMaxBackoff)
	defaultDuration(&opts.WarnInterval, DefaultWarnInterval)
	defaultDuration(&opts.FlushTimeout, DefaultFlushTimeout)
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueue
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	s.opts = opts
	s.f = syslogFormatter{
		facility: opts.Facility, hostname: headerToken(opts.Hostname, 255), procID: strconv.Itoa(os.Getpid()),
		cef: opts.Format == "cef", version: opts.Version, max: MaxMessage,
	}
	s.queue = make(chan syslogEntry, opts.QueueSize)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.done = make(chan struct{})
	s.stopped = make(chan struct{})
	// Optimistic until the first dial fails, so startup events are queued.
	s.up.Store(true)
	go s.run()
	enc := zapcore.NewJSONEncoder(event.EncoderConfig())
	return s, &syslogCore{LevelEnabler: lvl, enc: enc, sink: s}, nil
}

func defaultDuration(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

func syslogTLSConfig(o *Options, host string) (*tls.Config, error) {
	var c *tls.Config
	if o.TLSConfig != nil {
		c = o.TLSConfig.Clone()
	} else {
		c = &tls.Config{}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: ca_file: %w", ErrTLS, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: ca_file %s: no PEM certificate", ErrTLS, o.CAFile)
			}
			c.RootCAs = pool
		}
		if (o.CertFile == "") != (o.KeyFile == "") {
			return nil, fmt.Errorf("%w: cert_file and key_file go together", ErrTLS)
		}
		if o.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("%w: client certificate: %w", ErrTLS, err)
			}
			c.Certificates = []tls.Certificate{cert}
		}
	}
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12 // RFC 5425 as updated by RFC 9662
	}
	if o.ServerName != "" {
		c.ServerName = o.ServerName
	} else if c.ServerName == "" {
		c.ServerName = host
	}
	return c, nil
}

// Close stops accepting events, sends what is queued for up to
// FlushTimeout, closes the connection and reports the last drops. It is
// safe to call more than once.
func (s *Sink) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		t := time.AfterFunc(s.opts.FlushTimeout, func() {
			s.cancel()
			if c := s.live.Load(); c != nil {
				(*c).SetWriteDeadline(time.Now()) // a write stuck on a stalled collector
			}
		})
		<-s.stopped
		t.Stop()
		s.cancel()
	})
	return nil
}

// Stats returns the running totals.
func (s *Sink) Stats() Stats {
	return Stats{Sent: s.sent.Load(), Dropped: s.total.Load(), Connects: s.connect.Load(), Connected: s.up.Load()}
}

func (s *Sink) drop(cause *atomic.Uint64) {
	cause.Add(1)
	s.total.Add(1)
	if s.dropped != nil {
		s.dropped.Inc()
	}
}

// enqueue is the only thing the data path does: a non-blocking send.
func (s *Sink) enqueue(e syslogEntry) {
	if s.closed.Load() || !s.up.Load() {
		s.drop(&s.down)
		return
	}
	select {
	case s.queue <- e:
	default:
		s.drop(&s.full)
	}
}

// run is the writer goroutine: the only one that touches the connection.
func (s *Sink) run() {
	defer close(s.stopped)
	tick := time.NewTicker(s.opts.WarnInterval)
	defer tick.Stop()
	var backoff time.Duration
	buf := make([]byte, 0, 4096)
	for {
		if s.conn == nil {
			if err := s.dial(); err != nil {
				s.setDown(err)
				backoff = nextBackoff(backoff, s.opts.MaxBackoff)
				if !s.wait(backoff, tick) {
					s.finish()
					return
				}
				continue
			}
			s.up.Store(true)
			backoff = 0
		}
		select {
		case e := <-s.queue:
			var ok bool
			if buf, ok = s.send(buf[:0], &e); !ok {
				// Pause before redialling so an accept-and-reset collector
				// cannot turn the writer into a dial loop.
				backoff = nextBackoff(backoff, s.opts.MaxBackoff)
				if !s.wait(backoff, tick) {
					s.finish()
					return
				}
			}
		case <-tick.C:
			s.report()
		case <-s.done:
			s.flush(buf)
			s.finish()
			return
		}
	}
}

// wait sleeps d (jittered), reporting drops meanwhile; false if closing.
func (s *Sink) wait(d time.Duration, tick *time.Ticker) bool {
	t := time.NewTimer(d - time.Duration(rand.Int64N(int64(d)/5+1)))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case <-tick.C:
			s.report()
		case <-s.done:
			return false
		}
	}
}

func nextBackoff(d, limit time.Duration) time.Duration {
	return min(max(2*d, minSyslogBackoff), limit)
}

func (s *Sink) dial() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.DialTimeout)
	defer cancel()
	nd := &net.Dialer{Timeout: s.opts.DialTimeout, KeepAlive: 30 * time.Second}
	var c net.Conn
	var err error
	if s.network == "tls" {
		td := &tls.Dialer{NetDialer: nd, Config: s.tlsConf}
		c, err = td.DialContext(ctx, "tcp", s.addr)
	} else {
		c, err = nd.DialContext(ctx, s.network, s.addr)
	}
	if err != nil {
		return fmt.Errorf("syslog: dial %s://%s: %w", s.network, s.addr, err)
	}
	s.conn = c
	s.live.Store(&c)
	s.connect.Add(1)
	return nil
}

func (s *Sink) setDown(err error) {
	s.up.Store(false)
	msg := err.Error()
	s.lastErr.Store(&msg)
}

// send formats and writes one event. A stream connection that fails or
// times out is closed (a partial frame dies with it) and redialled; a UDP
// send error only loses that datagram.
func (s *Sink) send(buf []byte, e *syslogEntry) ([]byte, bool) {
	buf = s.f.format(buf, e, s.network != "udp")
	dl := time.Now().Add(s.opts.WriteTimeout)
	if !s.deadline.IsZero() && s.deadline.Before(dl) {
		dl = s.deadline
	}
	s.conn.SetWriteDeadline(dl)
	_, err := s.conn.Write(buf)
	if err == nil {
		s.sent.Add(1)
		return buf, true
	}
	s.drop(&s.failed)
	if s.network == "udp" {
		return buf, true
	}
	s.live.Store(nil)
	s.conn.Close()
	s.conn = nil
	s.setDown(fmt.Errorf("syslog: write %s://%s: %w", s.network, s.addr, err))
	return buf, false
}

// flush sends what is queued at Close until the queue is empty, the
// connection fails, or FlushTimeout passes.
func (s *Sink) flush(buf []byte) {
	s.deadline = time.Now().Add(s.opts.FlushTimeout)
	for s.conn != nil && time.Now().Before(s.deadline) {
		select {
		case e := <-s.queue:
			buf, _ = s.send(buf[:0], &e)
		default:
			return
		}
	}
}

func (s *Sink) finish() {
	s.live.Store(nil)
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	s.up.Store(false)
	for {
		select {
		case <-s.queue:
			s.drop(&s.down)
			continue
		default:
		}
		break
	}
	s.report()
}

func (s *Sink) report() {
	d := Drops{QueueFull: s.full.Swap(0), Disconnected: s.down.Swap(0), SendFailed: s.failed.Swap(0)}
	if d.Total() == 0 || s.warn == nil {
		return
	}
	if p := s.lastErr.Load(); p != nil {
		d.LastError = *p
	}
	s.warn(d)
}

// LogDrops logs the log-events-dropped warning for d. It goes to
// stdout and, queue permitting, to the collector too, so the SIEM learns
// of its own gap.
func LogDrops(log *zap.Logger, d Drops) {
	f := []zap.Field{
		zap.String("event.kind", "pipeline_error"),
		event.Category,
		// A failure is event.outcome; for the network category ECS has
		// no "error" type, and info is what this event is.
		zap.Strings("event.type", []string{"info"}),
		zap.String("event.action", event.ActionLogEventsDropped),
		zap.String("event.outcome", "failure"),
		zap.String("event.reason", dropReason(d)),
		zap.Uint64("kmsproxy.log.dropped", d.Total()),
		zap.Uint64("kmsproxy.log.dropped_queue_full", d.QueueFull),
		zap.Uint64("kmsproxy.log.dropped_disconnected", d.Disconnected),
		zap.Uint64("kmsproxy.log.dropped_send_failed", d.SendFailed),
	}
	if d.LastError != "" {
		f = append(f, zap.String("error.message", d.LastError))
	}
	log.Warn("syslog sink dropped "+strconv.FormatUint(d.Total(), 10)+" events", f...)
}

func dropReason(d Drops) string {
	switch max(d.QueueFull, d.Disconnected, d.SendFailed) {
	case d.QueueFull:
		return "syslog-queue-full"
	case d.Disconnected:
		return "syslog-disconnected"
	}
	return "syslog-send-failed"
}

// syslogCore is the zapcore.Core teed beside stdout.
type syslogCore struct {
	zapcore.LevelEnabler
	enc  zapcore.Encoder
	sink *Sink
}

var _ zapcore.Core = (*syslogCore)(nil)

func (c *syslogCore) With(fields []zapcore.Field) zapcore.Core {
	enc := c.enc.Clone()
	for i := range fields {
		fields[i].AddTo(enc)
	}
	return &syslogCore{LevelEnabler: c.LevelEnabler, enc: enc, sink: c.sink}
}

func (c *syslogCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

// Write encodes the event and offers it to the queue; it never blocks.
func (c *syslogCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	s := c.sink
	if s.closed.Load() || !s.up.Load() {
		s.drop(&s.down) // skip the encoding work too
		return nil
	}
	buf, err := c.enc.EncodeEntry(ent, fields)
	if err != nil {
		return fmt.Errorf("syslog: encode event: %w", err)
	}
	b := bytes.TrimRight(buf.Bytes(), "\r\n")
	e := syslogEntry{level: ent.Level, time: ent.Time, json: append([]byte(nil), b...)}
	buf.Free()
	s.enqueue(e)
	return nil
}

func (c *syslogCore) Sync() error { return nil }

// ---- formatting ----

// syslogFormatter turns one entry into one wire message.
type syslogFormatter struct {
	facility int
	hostname string
	procID   string
	cef      bool
	version  string
	max      int // longest SYSLOG-MSG, without the octet-count prefix
}

// format appends e as a message, octet-counted (RFC 6587 3.4.1, RFC 5425)
// when framed. The JSON is decoded here, off the data path.
func (f *syslogFormatter) format(dst []byte, e *syslogEntry, framed bool) []byte {
	ev := decodeEvent(e.json)
	var msg []byte
	if f.cef {
		msg = f.appendCEF(nil, e, ev)
	} else {
		msg = f.appendRFC5424(nil, e, ev)
	}
	if framed {
		return appendOctetCounted(dst, msg)
	}
	return append(dst, msg...)
}

func decodeEvent(b []byte) map[string]any {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if d.Decode(&m) != nil {
		return nil
	}
	return m
}

// appendOctetCounted frames msg as MSG-LEN SP SYSLOG-MSG.
func appendOctetCounted(dst, msg []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, ' ')
	return append(dst, msg...)
}

// severity maps zap levels onto RFC 5424 severities.
func severity(l zapcore.Level) int {
	switch {
	case l <= zapcore.DebugLevel:
		return 7
	case l == zapcore.InfoLevel:
		return 6
	case l == zapcore.WarnLevel:
		return 4
	case l == zapcore.ErrorLevel:
		return 3
	}
	return 2 // dpanic, panic, fatal: critical
}

// appendHeader appends "<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID ".
func (f *syslogFormatter) appendHeader(dst []byte, e *syslogEntry, msgID string) []byte {
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(f.facility*8+severity(e.level)), 10)
	dst = append(dst, ">1 "...)
	t := e.time
	if t.IsZero() {
		t = time.Now()
	}
	dst = t.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z07:00")
	dst = append(dst, ' ')
	dst = append(dst, f.hostname...)
	dst = append(dst, ' ')
	dst = append(dst, syslogAppName...)
	dst = append(dst, ' ')
	dst = append(dst, f.procID...)
	dst = append(dst, ' ')
	dst = append(dst, headerToken(msgID, 32)...)
	return append(dst, ' ')
}

// headerToken makes s a valid header field: 1..n PRINTUSASCII, or "-".
func headerToken(s string, n int) string {
	if s == "" {
		return "-"
	}
	b := []byte(s)
	if len(b) > n {
		b = b[:n]
	}
	for i, c := range b {
		if c < 33 || c > 126 {
			b[i] = '_'
		}
	}
	return string(b)
}

// sdFields are the event fields copied into structured data, in order:
// what a collector can index without parsing the JSON MSG.
var sdFields = []string{
	"event.action", "event.outcome", "event.reason", "event.kind",
	"source.ip", "source.port", "destination.ip", "destination.port",
	"network.transport", "network.protocol", "network.community_id",
	"rule.name", "kmsproxy.zone", "kmsproxy.connection_id",
	"dcerpc.interface.name", "dcerpc.opnum",
	"kms.application", "kms.version", "kms.client_machine_id", "kms.workstation", "kmsproxy.kms_result",
	"event.duration", "source.bytes", "destination.bytes", "kmsproxy.log.dropped",
}

// appendRFC5424 appends HEADER SP STRUCTURED-DATA SP MSG (RFC 5424 6),
// MSG being the event's JSON without a BOM. A message longer than f.max is
// cut at a UTF-8 boundary and marked kmsproxy.truncated="true".
func (f *syslogFormatter) appendRFC5424(dst []byte, e *syslogEntry, ev map[string]any) []byte {
	action, _ := ev["event.action"].(string)
	start := len(dst)
	dst = f.appendHeader(dst, e, action)
	head := len(dst)
	dst = appendSD(dst, ev, false)
	dst = append(dst, ' ')
	if len(dst)-start+len(e.json) <= f.max {
		return append(dst, e.json...)
	}
	dst = appendSD(dst[:head], ev, true)
	dst = append(dst, ' ')
	room := max(f.max-(len(dst)-start), 0)
	return append(dst, truncateUTF8(e.json, room)...)
}

// appendSD appends one SD-ELEMENT with the sdFields present, or "-".
func appendSD(dst []byte, ev map[string]any, truncated bool) []byte {
	start := len(dst)
	dst = append(dst, "["+sdID...)
	n := 0
	for _, k := range sdFields {
		v, ok := scalarText(ev[k])
		if !ok {
			continue
		}
		dst = appendSDParam(dst, k, v)
		n++
	}
	if truncated {
		dst = appendSDParam(dst, "kmsproxy.truncated", "true")
		n++
	}
	if n == 0 {
		return append(dst[:start], '-')
	}
	return append(dst, ']')
}

func appendSDParam(dst []byte, name, value string) []byte {
	dst = append(dst, ' ')
	dst = append(dst, name...)
	dst = append(dst, '=', '"')
	dst = appendSDValue(dst, value)
	return append(dst, '"')
}

// appendSDValue escapes '"', '\' and ']' (RFC 5424 6.3.3) and bounds the
// value to maxSDValue bytes at a UTF-8 boundary.
func appendSDValue(dst []byte, v string) []byte {
	if len(v) > maxSDValue {
		v = string(truncateUTF8([]byte(v), maxSDValue))
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '"', '\\', ']':
			dst = append(dst, '\\', c)
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// scalarText renders a decoded JSON scalar; arrays, objects and null are
// left to the JSON MSG.
func scalarText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

// truncateUTF8 returns the longest prefix of b no longer than n bytes that
// does not split a UTF-8 sequence.
func truncateUTF8(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[:n]
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		r, size := utf8.DecodeLastRune(b)
		if r != utf8.RuneError || size > 1 {
			break
		}
		b = b[:len(b)-1]
	}
	return b
}
