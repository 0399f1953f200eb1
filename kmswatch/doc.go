// Package kmswatch is the activation anomaly detector: it sees every
// decoded, allowed KMS activation request and raises an alert when a
// client machine ID turns up from a second source or workstation
// (kms-duplicate-cmid: a cloned image or a spoofed CMID) or when a
// client's clock is far off (kms-clock-skew).
//
//	w := kmswatch.New() // one per server, shared by its sessions
//	w.Observe(em, cfg.KMSWatch, src, &req, rule) // em: the connection's event.Emitter
//
// The proxy calls Observe once per activation it forwards; the alerts are
// logged and counted through the emitter like any decision.
//
// It only reports: it never refuses, delays or changes a call, and an
// alert does not affect the policy. It remembers at most
// kms_watch.max_tracked CMIDs (the least recently seen are forgotten), keeps
// nothing on disk, and does not follow the source across restarts.
//
// With a Shared table (SetShared: state.redis, every replica's
// observations) the shared table decides whenever it answers; the local
// table is still kept, so when the shared one fails the detector goes on
// with what this replica saw.
package kmswatch
