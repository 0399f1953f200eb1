package inventory

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseSince reads the CLI's --since: an age before now ("7d", "12h",
// "30m", "7d12h", any Go duration such as "1h30m") or a point in time (RFC
// 3339, "2006-01-02T15:04:05Z07:00", or a date "2006-01-02", taken as
// midnight UTC like the table's times).
func ParseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, errors.New("inventory: since: empty")
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	d, err := parseAge(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("inventory: since %q: want an age (7d, 12h, 30m, 1h30m) or a date (2006-01-02, RFC 3339)", s)
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("inventory: since %q: a negative age is in the future", s)
	}
	return now.Add(-d), nil
}

// parseAge is time.ParseDuration with a leading whole number of days
// ("7d", "7d12h").
func parseAge(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		return time.ParseDuration(s)
	}
	n, err := strconv.ParseUint(days, 10, 32)
	if err != nil || n > 100*366 {
		return 0, errors.New("bad day count")
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, errors.New("bad duration after the days")
		}
		d += r
	}
	return d, nil
}
