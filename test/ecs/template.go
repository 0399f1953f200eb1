package ecs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Elastic names: the data stream events go to shipped straight to
// Elasticsearch, its template, and the ingest pipeline the template makes
// the data stream's default.
const (
	DataStreamPattern = "logs-kmsproxy.events-*"
	TemplateName      = "logs-kmsproxy.events"
	PipelineName      = "kmsproxy-events"
	// TemplatePriority is above the built-in logs template's 100, which
	// matches logs-*-* too.
	TemplatePriority = 200
)

// ecsMappings is Elasticsearch's component template of dynamic templates
// for ECS names (8.13 on): it maps the fields a shipper adds (host.*,
// agent.*, container.*) the ECS way. Missing from older versions, which
// then map them dynamically.
const ecsMappings = "ecs@mappings"

type indexTemplate struct {
	IndexPatterns []string       `json:"index_patterns"`
	DataStream    struct{}       `json:"data_stream"`
	Priority      int            `json:"priority"`
	ComposedOf    []string       `json:"composed_of"`
	IgnoreMissing []string       `json:"ignore_missing_component_templates"`
	Template      templateBody   `json:"template"`
	Meta          map[string]any `json:"_meta"`
}

type templateBody struct {
	Settings map[string]any `json:"settings"`
	Mappings struct {
		Properties map[string]any `json:"properties"`
	} `json:"mappings"`
}

// Mapping is a field's Elasticsearch mapping as ECS writes it for the
// type: keywords ignore values above 1024 bytes, a Text keyword carries a
// match_only_text multi-field.
func Mapping(f Field) map[string]any {
	m := map[string]any{"type": string(f.Type)}
	if f.Type == Keyword {
		m["ignore_above"] = 1024
	}
	if f.Text {
		m["fields"] = map[string]any{"text": map[string]any{"type": string(MatchOnlyText)}}
	}
	return m
}

// Properties nests the mappings of fields by their dotted names, as
// Elasticsearch's mappings hold them ("event.kind" is event's property
// kind). A name that is a field and also an object holding fields is an
// error: Elasticsearch could map neither document.
func Properties(fields []Field) (map[string]any, error) {
	root := map[string]any{}
	sorted := append([]Field(nil), fields...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, f := range sorted {
		parts := strings.Split(f.Name, ".")
		props := root
		for i, p := range parts[:len(parts)-1] {
			node, ok := props[p].(map[string]any)
			if !ok {
				node = map[string]any{"properties": map[string]any{}}
				props[p] = node
			}
			sub, ok := node["properties"].(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%s: %s is a %v field, not an object", f.Name, strings.Join(parts[:i+1], "."), node["type"])
			}
			props = sub
		}
		last := parts[len(parts)-1]
		if _, taken := props[last]; taken {
			return nil, fmt.Errorf("%s: an object holds fields under this name", f.Name)
		}
		props[last] = Mapping(f)
	}
	return root, nil
}

// IndexTemplate is deploy/siem/elastic/index-template.json: a composable
// index template for DataStreamPattern mapping every field of the table
// (ECS's and kmsproxy's) with its type, whose data streams run the
// ingest pipeline by default.
func IndexTemplate() ([]byte, error) {
	props, err := Properties(All())
	if err != nil {
		return nil, err
	}
	t := indexTemplate{
		IndexPatterns: []string{DataStreamPattern},
		Priority:      TemplatePriority,
		ComposedOf:    []string{ecsMappings},
		IgnoreMissing: []string{ecsMappings},
		Meta: map[string]any{
			"description": "kmsproxy events (ECS " + Version + " and the kmsproxy.*, kms.*, dcerpc.* fields), generated from test/ecs",
			"ecs_version": Version,
		},
	}
	t.Template.Settings = map[string]any{"index": map[string]any{"default_pipeline": PipelineName}}
	t.Template.Mappings.Properties = props
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(t); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Flatten lists the leaf mappings of Elasticsearch properties by dotted
// name (multi-fields as <name>.<sub>): the inverse of Properties.
func Flatten(props map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	var walk func(prefix string, props map[string]any)
	walk = func(prefix string, props map[string]any) {
		for k, v := range props {
			m, ok := v.(map[string]any)
			if !ok {
				continue
			}
			name := prefix + k
			if sub, ok := m["properties"].(map[string]any); ok {
				walk(name+".", sub)
				continue
			}
			out[name] = m
			if fields, ok := m["fields"].(map[string]any); ok {
				for fk, fv := range fields {
					if fm, ok := fv.(map[string]any); ok {
						out[name+"."+fk] = fm
					}
				}
			}
		}
	}
	walk("", props)
	return out
}
