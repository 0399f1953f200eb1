package siem

// Just enough of Splunk to test deploy/siem/splunk without one: a .conf
// reader, PCRE-like regexes run by Python's re (Splunk's regexes are
// PCRE; Go's RE2 has no lookahead), a small evaluator for the eval forms
// props.conf uses, and the search forms eventtypes.conf uses. Each
// refuses what it does not know, so a form added to the add-on that this
// file cannot check fails the test instead of passing unchecked.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// confStanza is one [stanza] of a .conf file, its keys in file order.
type confStanza struct {
	name string
	keys []string
	vals map[string]string
}

// readConf reads a Splunk .conf file: [stanza] lines, key = value lines,
// # comments and blank lines. A line continued with a trailing backslash,
// a key outside a stanza, a key twice in one stanza or a stanza twice is
// an error.
func readConf(t *testing.T, path string) []*confStanza {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*confStanza
	seen := map[string]bool{}
	var cur *confStanza
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: a continued line (this reader takes one line per key)", path, n)
		case strings.HasPrefix(line, "["):
			if !strings.HasSuffix(line, "]") {
				t.Fatalf("%s:%d: bad stanza %q", path, n, line)
			}
			name := line[1 : len(line)-1]
			if seen[name] {
				t.Fatalf("%s:%d: stanza [%s] twice", path, n, name)
			}
			seen[name] = true
			cur = &confStanza{name: name, vals: map[string]string{}}
			out = append(out, cur)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || cur == nil {
				t.Fatalf("%s:%d: want key = value inside a stanza: %q", path, n, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if _, dup := cur.vals[k]; dup {
				t.Fatalf("%s:%d: [%s] sets %s twice", path, n, cur.name, k)
			}
			cur.keys = append(cur.keys, k)
			cur.vals[k] = v
		}
	}
	return out
}

func stanza(t *testing.T, conf []*confStanza, name string) *confStanza {
	t.Helper()
	for _, s := range conf {
		if s.name == name {
			return s
		}
	}
	t.Fatalf("no stanza [%s]", name)
	return nil
}

// ---- regexes, run by Python's re ----

// pyOp is one regex operation: search (the named groups of the first
// match), findall (every match's groups 1 and 2: FORMAT = $1::$2) or sub.
type pyOp struct {
	Op    string `json:"op"`
	Regex string `json:"re"`
	Repl  string `json:"repl"`
	Input string `json:"s"`
}

type pyResult struct {
	Error  string            `json:"error"`
	Groups map[string]string `json:"groups"`
	Start  int               `json:"start"` // where the match ended (search), -1 for none
	Pairs  [][2]string       `json:"pairs"`
	Out    string            `json:"out"`
}

const pyRegexScript = `
import json, re, sys
def pcre(p):
    # PCRE writes a named group (?<name>...); Python's re wants (?P<name>...).
    return re.sub(r'\(\?<([A-Za-z_][A-Za-z0-9_]*)>', r'(?P<\1>', p)
out = []
for op in json.load(sys.stdin):
    r = {"error": "", "groups": {}, "start": -1, "pairs": [], "out": ""}
    try:
        rx = re.compile(pcre(op["re"]))
        if op["op"] == "search":
            m = rx.search(op["s"])
            if m:
                r["groups"] = {k: v for k, v in m.groupdict().items() if v is not None}
                r["start"] = m.end()
        elif op["op"] == "findall":
            r["pairs"] = [[m.group(1), m.group(2)] for m in rx.finditer(op["s"])]
        elif op["op"] == "sub":
            r["out"] = rx.sub(op["repl"], op["s"])
        else:
            r["error"] = "unknown op " + op["op"]
    except re.error as e:
        r["error"] = "does not compile: %s" % e
    out.append(r)
json.dump(out, sys.stdout)
`

// python is Debian's python3 (what .ci/run installs with python3-yaml)
// or the first python3 on PATH.
func python(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("python3 not found: the add-on's regexes are checked with Python's re (apt-get install python3)")
	return ""
}

// runRegexes runs ops in one Python process.
func runRegexes(t *testing.T, ops []pyOp) []pyResult {
	t.Helper()
	in, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python(t), "-c", pyRegexScript)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	var res []pyResult
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(ops) {
		t.Fatalf("python answered %d results for %d ops: %v", len(res), len(ops), err)
	}
	return res
}

// sedSub splits a SEDCMD "s/regex/replacement/flags" (no '/' inside).
func sedSub(t *testing.T, cmd string) (re, repl string) {
	t.Helper()
	parts := strings.Split(cmd, "/")
	if len(parts) != 4 || parts[0] != "s" || (parts[3] != "" && parts[3] != "g") {
		t.Fatalf("SEDCMD %q: want s/regex/replacement/[g]", cmd)
	}
	return parts[1], parts[2]
}

// ---- eval ----

// evalValue is a Splunk eval value: nil (null), string, float64 or bool.
type evalValue any

// evalExpr is a parsed eval expression.
type evalExpr func(fields map[string]string) evalValue

// parseEval parses the eval forms the add-on uses: string and number
// literals, 'quoted' and bare field names, + - * /, == = != < <= > >=,
// AND OR NOT, parentheses, and the functions case, if, in, coalesce,
// isnull, isnotnull, null, true, false, lower, replace. It records every
// field the expression reads in refs.
func parseEval(src string, refs map[string]bool) (evalExpr, error) {
	p := &evalParser{src: src, refs: refs}
	p.next()
	e, err := p.or()
	if err == nil && p.tok.kind != tEOF {
		err = fmt.Errorf("unexpected %q at %d", p.tok.text, p.tok.pos)
	}
	return e, err
}

type evalTokKind int

const (
	tEOF evalTokKind = iota
	tNum
	tStr
	tField // 'quoted'
	tName
	tOp
)

type evalTok struct {
	kind evalTokKind
	text string
	pos  int
}

type evalParser struct {
	src  string
	pos  int
	tok  evalTok
	err  error
	refs map[string]bool
}

func (p *evalParser) next() {
	for p.pos < len(p.src) && p.src[p.pos] == ' ' {
		p.pos++
	}
	start := p.pos
	if p.pos >= len(p.src) {
		p.tok = evalTok{tEOF, "", start}
		return
	}
	c := p.src[p.pos]
	switch {
	case c == '"':
		var b strings.Builder
		p.pos++
		for p.pos < len(p.src) && p.src[p.pos] != '"' {
			if p.src[p.pos] == '\\' && p.pos+1 < len(p.src) {
				p.pos++ // eval strings escape \\ and \"
			}
			b.WriteByte(p.src[p.pos])
			p.pos++
		}
		if p.pos >= len(p.src) {
			p.err = fmt.Errorf("unterminated string at %d", start)
		}
		p.pos++
		p.tok = evalTok{tStr, b.String(), start}
	case c == '\'':
		end := strings.IndexByte(p.src[p.pos+1:], '\'')
		if end < 0 {
			p.err = fmt.Errorf("unterminated field name at %d", start)
			p.pos = len(p.src)
			p.tok = evalTok{tEOF, "", start}
			return
		}
		p.tok = evalTok{tField, p.src[p.pos+1 : p.pos+1+end], start}
		p.pos += end + 2
	case c >= '0' && c <= '9':
		for p.pos < len(p.src) && (p.src[p.pos] >= '0' && p.src[p.pos] <= '9' || p.src[p.pos] == '.') {
			p.pos++
		}
		p.tok = evalTok{tNum, p.src[start:p.pos], start}
	case unicode.IsLetter(rune(c)) || c == '_':
		for p.pos < len(p.src) && (unicode.IsLetter(rune(p.src[p.pos])) || unicode.IsDigit(rune(p.src[p.pos])) || p.src[p.pos] == '_' || p.src[p.pos] == '.') {
			p.pos++
		}
		p.tok = evalTok{tName, p.src[start:p.pos], start}
	default:
		for _, op := range []string{"==", "!=", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "(", ")", ","} {
			if strings.HasPrefix(p.src[p.pos:], op) {
				p.pos += len(op)
				p.tok = evalTok{tOp, op, start}
				return
			}
		}
		p.err = fmt.Errorf("unexpected %q at %d", c, start)
		p.pos = len(p.src)
		p.tok = evalTok{tEOF, "", start}
	}
}

func (p *evalParser) expect(op string) error {
	if p.err != nil {
		return p.err
	}
	if p.tok.kind != tOp || p.tok.text != op {
		return fmt.Errorf("want %q at %d, got %q", op, p.tok.pos, p.tok.text)
	}
	p.next()
	return nil
}

func (p *evalParser) or() (evalExpr, error) {
	return p.binary(p.and, func(t evalTok) bool { return t.kind == tName && t.text == "OR" })
}

func (p *evalParser) and() (evalExpr, error) {
	return p.binary(p.not, func(t evalTok) bool { return t.kind == tName && t.text == "AND" })
}

func (p *evalParser) binary(sub func() (evalExpr, error), is func(evalTok) bool) (evalExpr, error) {
	l, err := sub()
	for err == nil && is(p.tok) {
		op := p.tok.text
		p.next()
		var r evalExpr
		if r, err = sub(); err == nil {
			l = evalBinary(op, l, r)
		}
	}
	if err == nil {
		err = p.err
	}
	return l, err
}

func (p *evalParser) not() (evalExpr, error) {
	if p.tok.kind == tName && p.tok.text == "NOT" {
		p.next()
		e, err := p.not()
		return func(f map[string]string) evalValue {
			if v := e(f); v != nil {
				return !truthy(v)
			}
			return nil
		}, err
	}
	return p.cmp()
}

func (p *evalParser) cmp() (evalExpr, error) {
	l, err := p.add()
	if err == nil && p.tok.kind == tOp && comparisons[p.tok.text] {
		op := p.tok.text
		p.next()
		var r evalExpr
		if r, err = p.add(); err == nil {
			l = evalBinary(op, l, r)
		}
	}
	return l, err
}

var comparisons = map[string]bool{"==": true, "=": true, "!=": true, "<": true, "<=": true, ">": true, ">=": true}

func (p *evalParser) add() (evalExpr, error) {
	return p.binary(p.mul, func(t evalTok) bool { return t.kind == tOp && (t.text == "+" || t.text == "-") })
}

func (p *evalParser) mul() (evalExpr, error) {
	return p.binary(p.primary, func(t evalTok) bool { return t.kind == tOp && (t.text == "*" || t.text == "/") })
}

func (p *evalParser) primary() (evalExpr, error) {
	if p.err != nil {
		return nil, p.err
	}
	t := p.tok
	switch t.kind {
	case tNum:
		p.next()
		n, err := strconv.ParseFloat(t.text, 64)
		return func(map[string]string) evalValue { return n }, err
	case tStr:
		p.next()
		return func(map[string]string) evalValue { return t.text }, nil
	case tField:
		p.next()
		p.refs[t.text] = true
		return fieldRef(t.text), nil
	case tName:
		p.next()
		if p.tok.kind == tOp && p.tok.text == "(" {
			return p.call(t.text)
		}
		if t.text == "AND" || t.text == "OR" || t.text == "NOT" {
			return nil, fmt.Errorf("unexpected %s at %d", t.text, t.pos)
		}
		p.refs[t.text] = true
		return fieldRef(t.text), nil
	case tOp:
		if t.text == "(" {
			p.next()
			e, err := p.or()
			if err == nil {
				err = p.expect(")")
			}
			return e, err
		}
	}
	return nil, fmt.Errorf("unexpected %q at %d", t.text, t.pos)
}

func (p *evalParser) call(name string) (evalExpr, error) {
	if err := p.expect("("); err != nil {
		return nil, err
	}
	var args []evalExpr
	for !(p.tok.kind == tOp && p.tok.text == ")") {
		a, err := p.or()
		if err != nil {
			return nil, err
		}
		args = append(args, a)
		if p.tok.kind == tOp && p.tok.text == "," {
			p.next()
		} else if !(p.tok.kind == tOp && p.tok.text == ")") {
			return nil, fmt.Errorf("%s(: want , or ) at %d", name, p.tok.pos)
		}
	}
	p.next()
	return evalCall(name, args)
}

func fieldRef(name string) evalExpr {
	return func(f map[string]string) evalValue {
		if v, ok := f[name]; ok {
			return v
		}
		return nil
	}
}

func evalCall(name string, a []evalExpr) (evalExpr, error) {
	want := func(n int) error {
		if len(a) != n {
			return fmt.Errorf("%s takes %d arguments, got %d", name, n, len(a))
		}
		return nil
	}
	switch name {
	case "case":
		if len(a) == 0 || len(a)%2 != 0 {
			return nil, fmt.Errorf("case takes condition, value pairs")
		}
		return func(f map[string]string) evalValue {
			for i := 0; i < len(a); i += 2 {
				if truthy(a[i](f)) {
					return a[i+1](f)
				}
			}
			return nil
		}, nil
	case "if":
		return func(f map[string]string) evalValue {
			if truthy(a[0](f)) {
				return a[1](f)
			}
			return a[2](f)
		}, want(3)
	case "in":
		if len(a) < 2 {
			return nil, fmt.Errorf("in takes a field and values")
		}
		return func(f map[string]string) evalValue {
			v := a[0](f)
			if v == nil {
				return nil
			}
			for _, x := range a[1:] {
				if eq, ok := compare("==", v, x(f)).(bool); ok && eq {
					return true
				}
			}
			return false
		}, nil
	case "coalesce":
		return func(f map[string]string) evalValue {
			for _, x := range a {
				if v := x(f); v != nil {
					return v
				}
			}
			return nil
		}, nil
	case "isnull", "isnotnull":
		return func(f map[string]string) evalValue { return (a[0](f) == nil) == (name == "isnull") }, want(1)
	case "null":
		return func(map[string]string) evalValue { return nil }, want(0)
	case "true", "false":
		return func(map[string]string) evalValue { return name == "true" }, want(0)
	case "lower":
		return func(f map[string]string) evalValue {
			if v := a[0](f); v != nil {
				return strings.ToLower(text(v))
			}
			return nil
		}, want(1)
	case "replace":
		// The pattern and replacement must be literals: compiled once,
		// with RE2, which the add-on's patterns here fit.
		return func(f map[string]string) evalValue {
			v, re, repl := a[0](f), a[1](f), a[2](f)
			if v == nil || re == nil || repl == nil {
				return nil
			}
			rx, err := regexp.Compile(text(re))
			if err != nil {
				return fmt.Errorf("replace: %v", err)
			}
			return rx.ReplaceAllString(text(v), regexp.MustCompile(`\\(\d)`).ReplaceAllString(text(repl), "$${$1}"))
		}, want(3)
	}
	return nil, fmt.Errorf("function %s( is not one this evaluator knows", name)
}

func evalBinary(op string, l, r evalExpr) evalExpr {
	return func(f map[string]string) evalValue {
		a, b := l(f), r(f)
		switch op {
		case "AND":
			return truthy(a) && truthy(b)
		case "OR":
			return truthy(a) || truthy(b)
		}
		if a == nil || b == nil {
			return nil
		}
		switch op {
		case "+", "-", "*", "/":
			x, xok := number(a)
			y, yok := number(b)
			if !xok || !yok {
				if op == "+" {
					return text(a) + text(b)
				}
				return nil
			}
			switch op {
			case "+":
				return x + y
			case "-":
				return x - y
			case "*":
				return x * y
			}
			if y == 0 {
				return nil
			}
			return x / y
		}
		return compare(op, a, b)
	}
}

// compare compares as numbers when both sides are, else as text.
func compare(op string, a, b evalValue) evalValue {
	if a == nil || b == nil {
		return nil
	}
	x, xok := number(a)
	y, yok := number(b)
	var c int
	if xok && yok {
		c = cmpFloat(x, y)
	} else {
		c = strings.Compare(text(a), text(b))
	}
	switch op {
	case "==", "=":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	case ">=":
		return c >= 0
	}
	return nil
}

func cmpFloat(x, y float64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func truthy(v evalValue) bool {
	b, ok := v.(bool)
	return ok && b
}

func number(v evalValue) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case string:
		n, err := strconv.ParseFloat(x, 64)
		return n, err == nil
	}
	return 0, false
}

// text renders a value as Splunk shows it.
func text(v evalValue) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case error:
		return "error: " + x.Error()
	}
	return ""
}

// ---- eventtype searches ----

// searchTerm is one term of an eventtype search: field=value (a trailing
// * matches any suffix) or field IN ("a", "b"); terms are ANDed.
type searchTerm struct {
	field  string
	values []string
}

var (
	searchEqRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.:]*)=("[^"]*"|[^\s"()]+)`)
	searchInRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.:]*) IN \(((?:"[^"]*"(?:, )?)+)\)`)
	quotedRE   = regexp.MustCompile(`"([^"]*)"`)
)

func parseSearch(s string) ([]searchTerm, error) {
	var out []searchTerm
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if m := searchInRE.FindStringSubmatch(s); m != nil {
			term := searchTerm{field: m[1]}
			for _, q := range quotedRE.FindAllStringSubmatch(m[2], -1) {
				term.values = append(term.values, q[1])
			}
			out = append(out, term)
			s = s[len(m[0]):]
			continue
		}
		if m := searchEqRE.FindStringSubmatch(s); m != nil {
			out = append(out, searchTerm{field: m[1], values: []string{strings.Trim(m[2], `"`)}})
			s = s[len(m[0]):]
			continue
		}
		return nil, fmt.Errorf("search form not known to this test at %q", s)
	}
	return out, nil
}

func (st searchTerm) matches(f map[string]string) bool {
	v, ok := f[st.field]
	if !ok {
		return false
	}
	for _, want := range st.values {
		if p, wild := strings.CutSuffix(want, "*"); wild && strings.HasPrefix(v, p) || v == want {
			return true
		}
	}
	return false
}
