// Package rpcparse frames, parses and builds connection-oriented DCE/RPC v5
// PDUs (C706 chapter 12, MS-RPCE 2.2) from untrusted bytes, for a proxy
// that decides per PDU what reaches a KMS host.
//
// Typical use, one direction of a session:
//
//	fr := rpcparse.NewFramer(conn, limits.MaxFragment) // header checked before the body is read
//	var p rpcparse.PDU                                   // reused: parsing allocates nothing
//	for {
//		frag, err := fr.Next() // io.EOF between PDUs, io.ErrUnexpectedEOF inside one
//		if err != nil {
//			return err
//		}
//		if err := p.Parse(frag, limits.MaxFragment); err != nil {
//			return violation(rpcparse.Reason(err), err) // "bad-frag-length", "bad-context-count", ...
//		}
//		switch p.Type {
//		case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
//			for it := p.Bind.Contexts(); it.Next(); {
//				c := it.Context() // c.Abstract, c.Transfer(i), rpcparse.ClassifyTransfer
//			}
//		case rpcparse.PTypeRequest:
//			// p.Request.ContextID, p.Request.Opnum, p.Request.Stub
//		}
//		// rpcparse.ClassifyAuth(&p) says none / anonymous / ntlm / kerberos / negotiate / other.
//	}
//
// Every failure is a *ParseError (PType, Offset, Field) wrapping one
// exported class such as ErrFragLength; Reason maps the class to the stable
// token used as event.reason and metric label. Both integer byte orders are
// parsed, and UUIDs come back in canonical order whichever one was sent.
// AppendPDU re-encodes a parsed PDU byte for byte; the Append* builders make
// bind_nak and fault replies and test traffic.
//
// What the package refuses to do:
//
//   - Connectionless PDU types (ping, working, ack, …) and unknown types are
//     ErrPType; only rpc_vers 5.0/5.1, ASCII and IEEE are accepted.
//   - A frag_length above the caller's limit is refused from the 16-byte
//     header alone, before any of the body is waited for or buffered; so is
//     one too short for its type's fixed fields or an auth_length that does
//     not fit.
//   - Nothing is sized from a count an attacker sent: n_context_elem,
//     n_transfer_syn, n_results and n_protocols are checked against the
//     bytes actually present, and context items are walked in place.
//   - Slices in a PDU and the fragment from Framer.Next point into the
//     caller's or the framer's buffer. They are valid only until the next
//     read or parse and are capped at their own end, so appending to one
//     copies instead of overwriting its neighbours.
//   - It makes no policy decision: which interfaces, opnums, auth classes or
//     context counts are allowed is for package acl.
package rpcparse
