package siem

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// An independent reader of what the sink sends, written from RFC 5424,
// RFC 6587 and the CEF specification rather than from proxy/syslog.go.

// syslogMsg is one parsed RFC 5424 message.
type syslogMsg struct {
	Raw       string
	PRI       int
	Version   int
	Timestamp time.Time
	TimeText  string
	Hostname  string
	AppName   string
	ProcID    string
	MsgID     string
	SD        map[string]map[string]string // SD-ID → name → value
	SDOrder   []string                     // param names of the first element, in order
	Msg       string
}

var headerRE = regexp.MustCompile(`^<(\d{1,3})>(\d{1,2}) (\S+) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32}) `)

func parse5424(line string) (*syslogMsg, error) {
	m := headerRE.FindStringSubmatch(line)
	if m == nil {
		return nil, fmt.Errorf("not an RFC 5424 header: %.120q", line)
	}
	s := &syslogMsg{Raw: line, TimeText: m[3], Hostname: m[4], AppName: m[5], ProcID: m[6], MsgID: m[7], SD: map[string]map[string]string{}}
	s.PRI, _ = strconv.Atoi(m[1])
	s.Version, _ = strconv.Atoi(m[2])
	if s.PRI > 191 {
		return nil, fmt.Errorf("PRI %d out of range", s.PRI)
	}
	t, err := time.Parse(time.RFC3339Nano, s.TimeText)
	if err != nil {
		return nil, fmt.Errorf("TIMESTAMP %q: %w", s.TimeText, err)
	}
	s.Timestamp = t
	rest := line[len(m[0]):]
	if strings.HasPrefix(rest, "-") {
		rest = rest[1:]
	} else {
		for strings.HasPrefix(rest, "[") {
			if rest, err = s.parseElement(rest[1:]); err != nil {
				return nil, err
			}
		}
		if len(s.SD) == 0 {
			return nil, fmt.Errorf("no STRUCTURED-DATA: %.120q", rest)
		}
	}
	switch {
	case rest == "":
	case rest[0] == ' ':
		s.Msg = strings.TrimPrefix(rest[1:], "\ufeff")
	default:
		return nil, fmt.Errorf("no SP before MSG: %.40q", rest)
	}
	return s, nil
}

// parseElement reads SD-ID *(SP PARAM-NAME="PARAM-VALUE") "]".
func (s *syslogMsg) parseElement(in string) (string, error) {
	end := strings.IndexAny(in, " ]")
	if end <= 0 {
		return "", errors.New("bad SD-ID")
	}
	id := in[:end]
	params := map[string]string{}
	first := len(s.SD) == 0
	s.SD[id] = params
	in = in[end:]
	for {
		if strings.HasPrefix(in, "]") {
			return in[1:], nil
		}
		if !strings.HasPrefix(in, " ") {
			return "", fmt.Errorf("SD element %s: want SP or ]: %.40q", id, in)
		}
		in = in[1:]
		eq := strings.Index(in, `="`)
		if eq <= 0 || eq > 32 || strings.ContainsAny(in[:eq], " ]\"=") {
			return "", fmt.Errorf("bad PARAM-NAME in %.40q", in)
		}
		name := in[:eq]
		in = in[eq+2:]
		var v strings.Builder
		closed := false
		for i := 0; i < len(in); i++ {
			c := in[i]
			if c == '\\' && i+1 < len(in) && strings.IndexByte(`"\]`, in[i+1]) >= 0 {
				v.WriteByte(in[i+1])
				i++
				continue
			}
			if c == ']' {
				return "", fmt.Errorf("unescaped ] in %s", name)
			}
			if c == '"' {
				in = in[i+1:]
				closed = true
				break
			}
			v.WriteByte(c)
		}
		if !closed {
			return "", fmt.Errorf("unterminated value of %s", name)
		}
		params[name] = v.String()
		if first {
			s.SDOrder = append(s.SDOrder, name)
		}
	}
}

// event decodes the JSON MSG.
func (s *syslogMsg) event() (map[string]any, error) {
	d := json.NewDecoder(strings.NewReader(s.Msg))
	d.UseNumber()
	var ev map[string]any
	if err := d.Decode(&ev); err != nil {
		return nil, fmt.Errorf("MSG is not JSON: %w: %.200q", err, s.Msg)
	}
	if d.More() {
		return nil, errors.New("MSG has bytes after the JSON object")
	}
	return ev, nil
}

// readOctetCounted reads one RFC 6587 3.4.1 / RFC 5425 frame.
func readOctetCounted(r *bufio.Reader) (string, error) {
	digits, err := r.ReadString(' ')
	if err != nil {
		return "", err
	}
	digits = strings.TrimSuffix(digits, " ")
	if digits == "" || digits[0] == '0' || len(digits) > 6 {
		return "", fmt.Errorf("bad MSG-LEN %q", digits)
	}
	n, err := strconv.Atoi(digits)
	if err != nil {
		return "", fmt.Errorf("bad MSG-LEN %q: %w", digits, err)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// cefRecord is a parsed "CEF:0|…" message.
type cefRecord struct {
	Header [7]string // Version … Severity, unescaped
	Ext    map[string]string
}

func parseCEF(msg string) (*cefRecord, error) {
	if !strings.HasPrefix(msg, "CEF:") {
		return nil, fmt.Errorf("not CEF: %.40q", msg)
	}
	var r cefRecord
	in := msg[4:]
	for i := 0; i < 7; i++ {
		var b strings.Builder
		j := 0
		for ; j < len(in); j++ {
			if in[j] == '\\' && j+1 < len(in) {
				b.WriteByte(in[j+1])
				j++
				continue
			}
			if in[j] == '|' {
				break
			}
			b.WriteByte(in[j])
		}
		if j == len(in) {
			return nil, fmt.Errorf("CEF header field %d unterminated", i)
		}
		r.Header[i] = b.String()
		in = in[j+1:]
	}
	// Extension: key=value pairs; a value runs to the next " key=" whose
	// '=' is unescaped.
	r.Ext = map[string]string{}
	keyRE := regexp.MustCompile(`^[A-Za-z0-9_]+=`)
	for in != "" {
		k := keyRE.FindString(in)
		if k == "" {
			return nil, fmt.Errorf("bad CEF key at %.30q", in)
		}
		in = in[len(k):]
		var b strings.Builder
		j := 0
		for ; j < len(in); j++ {
			c := in[j]
			if c == '\\' && j+1 < len(in) {
				switch in[j+1] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				default:
					b.WriteByte(in[j+1])
				}
				j++
				continue
			}
			if c == '=' {
				return nil, fmt.Errorf("unescaped = in value of %s", k)
			}
			if c == ' ' && keyRE.MatchString(in[j+1:]) {
				break
			}
			b.WriteByte(c)
		}
		r.Ext[strings.TrimSuffix(k, "=")] = b.String()
		if j >= len(in) {
			break
		}
		in = in[j+1:]
	}
	return &r, nil
}
