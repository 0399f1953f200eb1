package admin

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/inventory"
)

// inventoryDisabled is /inventory's answer without an inventory.
const inventoryDisabled = "inventory disabled: this proxy keeps no activation inventory (inventory.enabled is false in its config)\n"

// serveInventory is GET /inventory: the rows the page's search selects,
// JSON by default, CSV for Accept: text/csv or ?format=csv. Parameters:
// q, zone, application, status, since (inventory.ParseSince) and limit
// (0 or absent: every row).
func (m *Management) serveInventory(w http.ResponseWriter, r *http.Request) {
	inv := m.statusOrZero().Inventory
	if inv == nil {
		http.Error(w, strings.TrimSuffix(inventoryDisabled, "\n"), http.StatusNotFound)
		return
	}
	v := r.URL.Query()
	f, err := readQuery(v).filter(time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			http.Error(w, fmt.Sprintf("bad limit %q: want a whole number, 0 for every row", s), http.StatusBadRequest)
			return
		}
		f.Limit = n
	}
	csv := acceptsCSV(r.Header.Values("Accept"))
	switch format := v.Get("format"); format {
	case "":
	case "csv":
		csv = true
	case "json":
		csv = false
	default:
		http.Error(w, fmt.Sprintf("bad format %q: want csv or json", format), http.StatusBadRequest)
		return
	}
	rows, err := query(r.Context(), inv, f)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Add("Vary", "Accept")
	if csv {
		h.Set("Content-Type", "text/csv; charset=utf-8")
		h.Set("Content-Disposition", `attachment; filename="kmsproxy-inventory.csv"`)
		inventory.WriteCSV(w, rows) // headers are sent: a failed write only ends the body
		return
	}
	h.Set("Content-Type", "application/json")
	inventory.WriteJSON(w, rows)
}

// acceptsCSV reports whether an Accept header names text/csv (with a
// non-zero quality).
func acceptsCSV(accept []string) bool {
	for _, a := range accept {
		for _, r := range strings.Split(a, ",") {
			params := strings.Split(r, ";")
			if !strings.EqualFold(strings.TrimSpace(params[0]), "text/csv") {
				continue
			}
			q := 1.0
			for _, p := range params[1:] {
				if k, val, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(k, "q") {
					if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
						q = f
					}
				}
			}
			if q > 0 {
				return true
			}
		}
	}
	return false
}
