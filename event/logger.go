package event

import (
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ECSVersion is the Elastic Common Schema version the events follow
// (ecs.version on every event); test/ecs validates them against its
// tables of that version.
const ECSVersion = "8.11.0"

// Where every event comes from, the same on each: kmsproxy is the
// observer (ECS: the device that observed and decided, which a proxy
// that filters is), its events one dataset of one module, and shipped
// straight to Elasticsearch they land in the data stream
// logs-kmsproxy.events-default.
const (
	// ObserverType is observer.type. ECS gives no fixed list; "firewall"
	// rather than "proxy" because what kmsproxy reports is a filter's
	// verdict on each connection, bind and call (allowed, denied), which is
	// what SIEM content for firewalls reads, while ECS's proxies are web
	// proxies reporting http.* and url.*.
	ObserverType = "firewall"
	Vendor       = "kmsproxy" // observer.vendor
	Product      = "kmsproxy" // observer.product
	Module       = "kmsproxy" // event.module
	Dataset      = "kmsproxy.events"
	// DataStreamNamespace is data_stream.namespace; an ingest pipeline or
	// the shipper may set another.
	DataStreamNamespace = "default"
)

// EncoderConfig names the fixed keys the way Elastic Common Schema does;
// stdout and the syslog sink encode events with it alike.
func EncoderConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:        "@timestamp",
		LevelKey:       "log.level",
		MessageKey:     "message",
		NameKey:        "log.logger",
		CallerKey:      "",
		StacktraceKey:  "",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     utcTimeEncoder,
		EncodeDuration: zapcore.NanosDurationEncoder, // ECS event.duration is in nanoseconds
	}
}

// utcTimeEncoder writes times in UTC with milliseconds
// ("2026-11-23T01:24:30.513Z"): RFC 3339 whatever the machine's time zone
// (zap's ISO 8601 encoder writes a local offset as +0100, which is not).
func utcTimeEncoder(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	zapcore.ISO8601TimeEncoder(t.UTC(), enc)
}

// LoggerOptions are NewLoggerWith's: what NewLogger takes, and the
// version every event names as observer.version.
type LoggerOptions struct {
	Level  string // log.level: debug, info, warn, error
	Format string // ecs (JSON) or console
	// Version is observer.version: the kmsproxy release. "" is "dev", what
	// a build without a stamped version calls itself.
	Version string
	Out     io.Writer      // stdout in production
	Extra   []zapcore.Core // teed beside Out (the syslog sink); they never block it
}

// NewLogger builds the event logger: one JSON object per line with ECS
// field names ("ecs"), or a human-readable console format. Every event is
// written to w (stdout in production); extra cores (the syslog sink) are
// teed beside it and never block it. Its events say observer.version
// "dev"; serve uses NewLoggerWith and the release's version.
func NewLogger(level, format string, w io.Writer, extra ...zapcore.Core) (*zap.Logger, error) {
	return NewLoggerWith(LoggerOptions{Level: level, Format: format, Out: w, Extra: extra})
}

// NewLoggerWith builds the event logger of o. The fields every event
// shares (ecs.version, service.type, observer.*, event.module,
// event.dataset, data_stream.*) are encoded once, here, not per event.
func NewLoggerWith(o LoggerOptions) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(o.Level)); err != nil {
		return nil, fmt.Errorf("log.level %q: %w", o.Level, err)
	}
	var enc zapcore.Encoder
	switch o.Format {
	case "", "ecs", "json":
		enc = zapcore.NewJSONEncoder(EncoderConfig())
	case "console":
		cfg := EncoderConfig()
		cfg.EncodeDuration = zapcore.StringDurationEncoder
		enc = zapcore.NewConsoleEncoder(cfg)
	default:
		return nil, fmt.Errorf("log.format %q: want ecs or console", o.Format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(o.Out)), lvl)
	if len(o.Extra) > 0 {
		// The sinks first: their writes only enqueue, and an event that is
		// on stdout is then already queued for every sink, so a Close that
		// follows what stdout showed flushes it rather than dropping it.
		core = zapcore.NewTee(append(append([]zapcore.Core(nil), o.Extra...), core)...)
	}
	version := o.Version
	if version == "" {
		version = "dev"
	}
	return zap.New(core).With(
		zap.String("ecs.version", ECSVersion),
		zap.String("service.type", "kmsproxy"),
		zap.String("observer.type", ObserverType),
		zap.String("observer.vendor", Vendor),
		zap.String("observer.product", Product),
		zap.String("observer.version", version),
		zap.String("event.module", Module),
		zap.String("event.dataset", Dataset),
		zap.String("data_stream.type", "logs"),
		zap.String("data_stream.dataset", Dataset),
		zap.String("data_stream.namespace", DataStreamNamespace),
	), nil
}
