package inventory

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Summary counts machines (distinct client machine IDs) in a set of rows.
type Summary struct {
	Machines  int     `json:"machines"`
	Rows      int     `json:"rows"`
	ByProduct []Count `json:"by_product"`
	ByZone    []Count `json:"by_zone"`
	ByStatus  []Count `json:"by_status"`
}

// Count is the number of machines with one value: most first, then by
// name.
type Count struct {
	Name     string `json:"name"`
	Machines int    `json:"machines"`
}

// none names an empty zone, product or status in a Summary.
const none = "(none)"

// Product is the name a Summary counts r under: the SKU name, preceded by
// the application name unless the SKU name already starts with it.
func Product(r *Row) string {
	app, sku := strings.TrimSpace(r.Application), strings.TrimSpace(r.SKU)
	switch {
	case sku == "" && app == "":
		return none
	case sku == "":
		return app
	case app == "" || len(sku) >= len(app) && strings.EqualFold(sku[:len(app)], app):
		return sku
	}
	return app + " " + sku
}

// Summarize counts the machines in rows: in all, per product, per last
// zone and per licence status.
func Summarize(rows []Row) Summary {
	machines := map[string]bool{}
	product := map[string]map[string]bool{}
	zone := map[string]map[string]bool{}
	status := map[string]map[string]bool{}
	add := func(m map[string]map[string]bool, key, cmid string) {
		if key == "" {
			key = none
		}
		set := m[key]
		if set == nil {
			set = map[string]bool{}
			m[key] = set
		}
		set[cmid] = true
	}
	for i := range rows {
		r := &rows[i]
		machines[r.CMID] = true
		add(product, Product(r), r.CMID)
		add(zone, r.LastZone, r.CMID)
		add(status, r.LicenseStatus, r.CMID)
	}
	return Summary{
		Machines:  len(machines),
		Rows:      len(rows),
		ByProduct: counts(product),
		ByZone:    counts(zone),
		ByStatus:  counts(status),
	}
}

func counts(m map[string]map[string]bool) []Count {
	out := make([]Count, 0, len(m))
	for name, set := range m {
		out = append(out, Count{Name: name, Machines: len(set)})
	}
	slices.SortFunc(out, func(a, b Count) int {
		if c := cmp.Compare(b.Machines, a.Machines); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// String is the summary on one line, its names escaped for a terminal:
// "3 machines, 4 rows; by product: Windows 10 Enterprise 2, Office 2016 1;
// by zone: dmz 3; by status: Licensed 3".
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s, %d %s", s.Machines, plural(s.Machines, "machine"), s.Rows, plural(s.Rows, "row"))
	for _, part := range []struct {
		label  string
		counts []Count
	}{{"product", s.ByProduct}, {"zone", s.ByZone}, {"status", s.ByStatus}} {
		if len(part.counts) == 0 {
			continue
		}
		fmt.Fprintf(&b, "; by %s: ", part.label)
		for i, c := range part.counts {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %d", Sanitize(c.Name), c.Machines)
		}
	}
	return b.String()
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
