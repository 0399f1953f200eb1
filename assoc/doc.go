// Package assoc is the DCE/RPC association state machine of kmsproxy: DESIGN
// rules 3–7 for both directions of one connection, and the only
// implementation of them. The live proxy and `kmsproxy replay` both drive
// it, so what replay says of a capture is what the proxy does.
//
//	a := assoc.New(nil)                 // one per connection
//	env := assoc.Env{Policy: pol, Limits: lim, Src: src, RateOK: limiter}
//	p.Parse(frag, maxFrag)              // framing (rule 2) is rpcparse's
//	step := a.Client(&env, &p, frag)    // a client PDU in …
//	switch step.Verdict {               // … one Step out, acted on in one place
//	case assoc.Forward: write(upstream, step.Out)
//	case assoc.Refuse:  write(client, step.Answer); close()
//	case assoc.Close:   close() // a protocol violation: no answer
//	}
//	step = a.Host(&env, &hostPDU)       // the host's answer: Relay or Close
//
// The state is explicit: a State (AwaitingBind, BindSent, Bound,
// Assembling, AlterSent, CallSent) with one transition table per
// direction; a PDU type a state has no entry for is a violation with a
// named reason. A Step carries its verdict, the stage and reason that
// decided it, the policy decision and the facts an event needs.
//
// What it does not do: sockets, clocks, logging, metrics, connection
// counts or timeouts. Time-dependent checks come in through Env (RateOK);
// a driver that cannot evaluate them (replay) leaves them nil and says so.
// Every byte slice in a Step is valid until the next call.
package assoc
