package event

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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
		EncodeTime:     zapcore.ISO8601TimeEncoder,
		EncodeDuration: zapcore.NanosDurationEncoder, // ECS event.duration is in nanoseconds
	}
}

// NewLogger builds the event logger: one JSON object per line with ECS
// field names ("ecs"), or a human-readable console format. Every event is
// written to w (stdout in production); extra cores (the syslog sink) are
// teed beside it and never block it.
func NewLogger(level, format string, w io.Writer, extra ...zapcore.Core) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level %q: %w", level, err)
	}
	var enc zapcore.Encoder
	switch format {
	case "", "ecs", "json":
		enc = zapcore.NewJSONEncoder(EncoderConfig())
	case "console":
		cfg := EncoderConfig()
		cfg.EncodeDuration = zapcore.StringDurationEncoder
		enc = zapcore.NewConsoleEncoder(cfg)
	default:
		return nil, fmt.Errorf("log.format %q: want ecs or console", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)
	if len(extra) > 0 {
		core = zapcore.NewTee(append([]zapcore.Core{core}, extra...)...)
	}
	return zap.New(core).With(zap.String("ecs.version", "8.11.0"), zap.String("service.type", "kmsproxy")), nil
}
