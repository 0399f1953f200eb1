package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the checks as a table and a verdict line naming what
// got through, whether the KMS bind was accepted, and what could not run.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tEXPECTED\tSEEN\tRESULT")
	for _, c := range r.Results {
		res := "ok"
		switch {
		case c.Outcome == Skipped:
			res = "skipped"
		case !c.Pass && c.Expected == ExpectRefuse && c.Outcome == Accepted:
			res = "GOT THROUGH"
		case !c.Pass:
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s: %s\t%s\n", c.Check, c.Expected, c.Outcome, c.Seen, res)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, r.Verdict())
	return err
}

// Verdict is the one-line summary: PASS, or FAIL with every reason.
func (r *Report) Verdict() string {
	if r.OK() {
		return fmt.Sprintf("PASS %s: KMS bind accepted; all %d refusal checks refused", r.Target, len(r.Results)-1)
	}
	var why []string
	if got := r.GotThrough(); len(got) > 0 {
		why = append(why, "got through: "+strings.Join(got, ", "))
	}
	if !r.KMSAccepted() {
		why = append(why, "the KMS bind was NOT accepted (clients cannot activate)")
	}
	if f := r.Failed(); len(f) > 0 {
		why = append(why, "could not run: "+strings.Join(f, ", "))
	}
	return fmt.Sprintf("FAIL %s: %s", r.Target, strings.Join(why, "; "))
}

// WriteJSON prints the report as one JSON object with "ok" and "verdict".
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		*Report
		OK          bool     `json:"ok"`
		KMSAccepted bool     `json:"kms_accepted"`
		GotThrough  []string `json:"got_through"`
		Verdict     string   `json:"verdict"`
	}{r, r.OK(), r.KMSAccepted(), nonNil(r.GotThrough()), r.Verdict()})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
