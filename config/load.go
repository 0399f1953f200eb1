package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts every override variable: KMSPROXY_LIMITS_IDLE_TIMEOUT.
const EnvPrefix = "KMSPROXY"

// keyDelim is viper's path separator. Not ".": zone names may contain dots.
const keyDelim = "::"

// Load reads, decodes and validates the YAML file at path and compiles its
// policy. A missing file wraps ErrNotFound and fs.ErrNotExist; anything
// wrong with the contents is a *ValidationError listing every problem.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(path, data)
}

func parse(path string, data []byte) (*Config, error) {
	invalid := func(ps ...Problem) error { return &ValidationError{File: path, Problems: ps} }

	v := viper.NewWithOptions(viper.KeyDelimiter(keyDelim))
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, invalid(Problem{Message: "not valid YAML: " + yamlMessage(err)})
	}
	for _, key := range leafKeys(reflect.TypeFor[Config](), "") {
		env := EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, keyDelim, "_"))
		if err := v.BindEnv(key, env); err != nil {
			return nil, fmt.Errorf("config: bind %s: %w", env, err)
		}
	}

	// A value of the wrong type is reported, and the rest of the (partly
	// decoded) config is still validated so that every problem shows at once.
	cfg := Default()
	var ps []Problem
	if err := v.UnmarshalExact(&cfg); err != nil {
		ps = explainKeys(decodeProblems(err))
	}
	cfg.Path = path
	order, dupZones := zoneOrder(data, cfg.Zones)
	cfg.ZoneOrder = order
	for _, p := range validate(&cfg, dupZones) {
		if !overlaps(ps, p.Path) {
			ps = append(ps, p)
		}
	}
	if len(ps) > 0 {
		cfg.Policy = nil
		return nil, invalid(ps...)
	}
	return &cfg, nil
}

// overlaps reports whether path is at, above or below a path already in ps
// (a decode failure there makes validation's view of it meaningless).
func overlaps(ps []Problem, path string) bool {
	for _, p := range ps {
		if p.Path == "" || path == p.Path || strings.HasPrefix(path, p.Path+".") || strings.HasPrefix(path, p.Path+"[") ||
			strings.HasPrefix(p.Path, path+".") || strings.HasPrefix(p.Path, path+"[") {
			return true
		}
	}
	return false
}

// leafKeys lists the viper keys of every scalar or list setting in t, so each
// can be overridden from the environment. Zones and rules (maps and lists of
// structs) are not overridable one field at a time and are left out.
func leafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for f := range t.Fields() {
		tag := f.Tag.Get("mapstructure")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]():
			keys = append(keys, leafKeys(f.Type, key+keyDelim)...)
		case f.Type.Kind() == reflect.Map,
			f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
		default:
			keys = append(keys, key)
		}
	}
	return keys
}

// decodeProblems turns mapstructure's joined errors into problems at YAML paths.
func decodeProblems(err error) []Problem {
	var ps []Problem
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		de, ok := err.(*mapstructure.DecodeError)
		if !ok {
			if u := errors.Unwrap(err); u != nil {
				walk(u)
				return
			}
			ps = append(ps, Problem{Message: err.Error()})
			return
		}
		inner := de.Unwrap()
		if _, ok := inner.(interface{ Unwrap() []error }); ok {
			walk(inner)
			return
		}
		path := yamlPath(de.Name())
		if keys, ok := strings.CutPrefix(inner.Error(), "has invalid keys: "); ok {
			for _, k := range strings.Split(keys, ", ") {
				ps = append(ps, Problem{Path: joinPath(path, k), Message: "unknown key"})
			}
			return
		}
		ps = append(ps, Problem{Path: path, Message: typeMessage(inner)})
	}
	walk(err)
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Path < ps[j].Path })
	return ps
}

// typeMessage says which value had the wrong type, in YAML's words.
func typeMessage(err error) string {
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("cannot read %q as %s", fmt.Sprint(pe.Value), typeName(pe.Expected.Type()))
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return fmt.Sprintf("cannot read %q as %s", fmt.Sprint(ue.Value), typeName(ue.Expected.Type()))
	}
	if strings.HasPrefix(err.Error(), "time: ") {
		return "not a duration: write a number and a unit, e.g. 30s"
	}
	return err.Error()
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration (e.g. 30s)"
	case t.Kind() == reflect.Slice:
		return "a list"
	case t.Kind() == reflect.Struct, t.Kind() == reflect.Map, t.Kind() == reflect.Pointer:
		return "a mapping"
	}
	if k := t.Kind().String(); strings.HasPrefix(k, "int") || strings.HasPrefix(k, "uint") {
		return "an integer"
	}
	return "a " + t.Kind().String()
}

// yamlPath rewrites mapstructure's names (zones[dmz][1]) to our paths
// (zones.dmz[1]).
func yamlPath(name string) string {
	if rest, ok := strings.CutPrefix(name, "zones["); ok {
		if zone, tail, ok := strings.Cut(rest, "]"); ok {
			return "zones." + zone + tail
		}
	}
	return name
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func yamlMessage(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "yaml: "); i >= 0 {
		return msg[i+len("yaml: "):]
	}
	return msg
}

// zoneOrder returns zone names (lower-cased) in the order the file lists
// them, plus any name written twice in different case, which viper would
// silently merge. Zones the file does not list (none today) follow, sorted.
func zoneOrder(data []byte, zones map[string][]string) (order, dups []string) {
	var doc yaml.Node
	seen := map[string]bool{}
	if yaml.Unmarshal(data, &doc) == nil && len(doc.Content) == 1 {
		root := doc.Content[0]
		for i := 0; root.Kind == yaml.MappingNode && i+1 < len(root.Content); i += 2 {
			if strings.ToLower(root.Content[i].Value) != "zones" || root.Content[i+1].Kind != yaml.MappingNode {
				continue
			}
			m := root.Content[i+1]
			for j := 0; j+1 < len(m.Content); j += 2 {
				name := strings.ToLower(m.Content[j].Value)
				if seen[name] {
					dups = append(dups, name)
					continue
				}
				if _, ok := zones[name]; ok {
					seen[name] = true
					order = append(order, name)
				}
			}
		}
	}
	var rest []string
	for name := range zones {
		if !seen[name] {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	return append(order, rest...), dups
}
