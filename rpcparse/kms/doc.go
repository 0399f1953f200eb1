// Package kms decodes the payload of Microsoft KMS activation: the NDR stub
// of RequestActivation (opnum 0 of interface 51c82175-844e-4750-b0d8-ec255555bc06)
// and the V4, V5 and V6 request and response messages inside it.
//
// Typical use, once a request PDU on a KMS context has passed the DCE/RPC
// checks (the Request lives with the connection, so nothing allocates):
//
//	blob, err := kms.ParseRequestStub(pdu.Request.Stub, kms.Encoding{NDR64: ctxIsNDR64, BigEndian: pdu.DataRep.BigEndian()})
//	if err == nil {
//		err = kms.DecodeRequest(blob, &conn.kmsReq)
//	}
//	if err != nil {
//		return refuse(kms.Reason(err)) // "kms-bad-mac", "kms-bad-padding", ...
//	}
//	log(conn.kmsReq.MajorVersion, kms.ApplicationName(conn.kmsReq.ApplicationID),
//		conn.kmsReq.CMID, conn.kmsReq.Workstation())
//
// and for the reply:
//
//	blob, hr, err := kms.ParseResponseStub(pdu.Response.Stub, kms.Encoding{NDR64: ctxIsNDR64, BigEndian: pdu.DataRep.BigEndian()})
//	if err == nil && hr == kms.HResultOK {
//		err = kms.DecodeResponse(blob, &conn.kmsReq, &conn.kmsResp)
//	}
//
// Requests are checked strictly, because the proxy decides on them: the NDR
// sizes must agree, V4 must carry its MAC, V5/V6 must decrypt to the fixed
// pad and a consistent inner version, and every field must be in range
// (see DecodeRequest). Responses are only logged, so they are read
// leniently and their integrity checks are reported as booleans.
//
// What the package does not do:
//   - It never contacts a KMS host or judges licensing; whether a product
//     may be activated is the acl package's business.
//   - It does not polish hostile text: Workstation and EPID return what the
//     client sent (after range checks), to be escaped by the logger.
//   - It implements its own Rijndael only because KMS needs a 160-bit key
//     and a tampered V6 key schedule. The keys are public constants; none of
//     this is confidentiality, and the cipher must not be used for anything
//     else.
//   - It does not police clocks (a ±4 h window is a policy choice) or
//     tolerate Wine's over-long request blobs, which vlmcsd accepts.
package kms
