package admin

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string
	Format string
}

// RegisterFlags registers the logging flags on fs.
func (c *LogConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Level, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.Format, "log-format", "json", "log format: json or text")
}

// Validate checks c.
func (c *LogConfig) Validate() error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.Level)); err != nil {
		return fmt.Errorf("log-level %q: %w", c.Level, err)
	}
	if c.Format != "json" && c.Format != "text" {
		return fmt.Errorf("log-format %q: want json or text", c.Format)
	}
	return nil
}

// NewLogger builds the service's logger. Attribute values are escaped by the
// handlers, so attacker-controlled strings logged as attributes cannot forge
// log lines.
func (c *LogConfig) NewLogger(w io.Writer, service string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.Level)) // checked by Validate
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if c.Format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h).With("service", service)
}
