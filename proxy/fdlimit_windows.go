package proxy

import "golang.org/x/sys/windows"

// Winsock's own codes for an accept out of resources: syscall.EMFILE and
// ENFILE on Windows are invented values no socket call returns.
var (
	errEMFILE error = windows.WSAEMFILE  // too many open sockets
	errENFILE error = windows.WSAENOBUFS // no buffer space (system-wide)
)

// fdBudget on Windows: there is no RLIMIT_NOFILE to read or raise. Sockets
// are kernel handles, bounded per process only by the handle table (about
// 16 million) and by memory, so no descriptor budget is kept (0): the cap
// that matters is limits.connections, which admission enforces, and a
// connection holds at most two sockets (client, and upstream once its bind
// was allowed). That is the budget a fixed one would be anyway —
// 2 × limits.connections + fdReserve can never be exceeded — without a
// second number that could disagree with the configuration after a reload.
// An accept that fails for lack of resources still backs off (Serve).
func fdBudget() (budget int, limit uint64) { return 0, 0 }
