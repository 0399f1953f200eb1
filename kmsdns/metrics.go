package kmsdns

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/dns/dnsmessage"
)

// metrics are the responder's series, on the proxy's registry. Labels
// come from fixed token sets (qtypeLabel, rcodeLabel, the ReasonDNS*
// reasons), so a query names no label value of its own.
type metrics struct {
	queries     *prometheus.CounterVec // qtype, rcode
	refused     *prometheus.CounterVec // reason
	rateLimited prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_dns_queries_total", Help: "DNS responses the responder sent, by query type and response code.",
		}, []string{"qtype", "rcode"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_dns_refused_total", Help: "DNS queries the responder refused, answered with an error or dropped, by reason.",
		}, []string{"reason"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsproxy_dns_rate_limited_total", Help: "DNS queries dropped because their source was over dns.rate_limit_per_second.",
		}),
	}
	var err error
	m.queries, err = register(reg, m.queries)
	if err != nil {
		return nil, err
	}
	if m.refused, err = register(reg, m.refused); err != nil {
		return nil, err
	}
	if m.rateLimited, err = register(reg, m.rateLimited); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered
// under its name (a second Server on the same registry counts into it).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if prev, ok := are.ExistingCollector.(C); ok {
			return prev, nil
		}
	}
	return c, err
}

// qtypeLabel is a query type's label: the types the responder serves by
// name, "other" for the rest.
func qtypeLabel(t dnsmessage.Type, has bool) string {
	if !has {
		return "none"
	}
	switch t {
	case dnsmessage.TypeSRV:
		return "SRV"
	case dnsmessage.TypeA:
		return "A"
	case dnsmessage.TypeAAAA:
		return "AAAA"
	case dnsmessage.TypeSOA:
		return "SOA"
	case dnsmessage.TypeNS:
		return "NS"
	case dnsmessage.TypeALL:
		return "ANY"
	case dnsmessage.TypeAXFR:
		return "AXFR"
	case typeIXFR:
		return "IXFR"
	}
	return "other"
}

// rcodeLabel names the response codes the responder sends.
func rcodeLabel(rc dnsmessage.RCode) string {
	switch rc {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeNameError:
		return "NXDOMAIN"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	case RCodeBadVersion:
		return "BADVERS"
	}
	return "other"
}
