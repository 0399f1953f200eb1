// Package inventory is the persistent activation inventory: one row per
// (client machine ID, application) that the proxy saw activate, kept in a
// SQLite file that the proxy writes and `kmsproxy inventory` (and the
// HTTP endpoint) reads.
//
//	s, err := inventory.Open("/var/lib/kmsproxy/inventory.db", inventory.Options{
//		Retention: 90 * 24 * time.Hour, // StoreWorkstation false: names kept hashed
//	})
//	if err != nil { … }
//	defer s.Close()
//	w := inventory.NewWriter(s, 4096, nil) // w.Stats() counts written, dropped, failed
//	w.SetOnError(func(err error) { log.Warn("inventory", zap.Error(err)) })
//	defer w.Close() // before s.Close: writes what is queued
//
//	w.Submit(inventory.Activation{Time: now, CMID: …, ApplicationID: …, Workstation: …})
//
//	rows, err := s.Query(ctx, inventory.Filter{Zone: "dmz", Since: since})
//	err = inventory.WriteTable(os.Stdout, rows)
//
// The CLI opens the same file with OpenReadOnly while the proxy runs.
//
// # Why SQLite
//
// The file is SQLite, through the pure-Go driver modernc.org/sqlite (the
// binary stays CGO-free and static), not bbolt: the CLI must read the file
// while the proxy writes it, and SQLite in WAL mode lets reader processes
// beside the one writer, each seeing the last committed state, while
// bbolt's file lock keeps a second process out altogether (or blocks it
// until the proxy exits). And the status page's filters and sorting over
// 100,000 rows are SQL with indexes (last_seen; zone and licence status
// each with last_seen), not hand-written scans.
//
// # What it refuses
//
//   - Open creates the file, never a directory: a path in a missing or
//     unwritable directory is an error wrapping ErrNotWritable.
//   - A file that is not SQLite, a SQLite database of another program, or
//     an inventory written by a newer schema version than SchemaVersion is
//     an error wrapping ErrSchema: a newer file is never downgraded or
//     misread.
//   - OpenReadOnly never creates or writes the database: a missing file
//     is an error wrapping fs.ErrNotExist; its Store refuses Record and
//     Prune (ErrReadOnly). (SQLite may create the -wal and -shm files
//     beside it, its WAL index, which a reader needs too; run as root, it
//     gives them the database file's owner.)
//   - Record skips an activation without a client machine ID or
//     application ID (ErrInvalid) and cuts any string at 4 KiB.
//   - With Options.StoreWorkstation false (the zero value) the workstation
//     name, which the client chooses, is never written: only
//     "sha256:" + 16 bytes of HMAC-SHA256 under a random per-database salt
//     kept in the file's meta table. The same name (ignoring case) maps to
//     the same value within one database, so machines can still be told
//     apart and a full name typed into Filter.Search still finds its rows;
//     two databases' values cannot be matched up. The salt is in the file,
//     so whoever can read the file can test guessed names: the hash keeps
//     names out of the file, not out of reach of a dictionary.
//   - WriteTable (and Summary.String) escape every string that came off
//     the wire for a terminal and cut long cells; WriteCSV escapes the
//     same way and defuses formula injection. WriteJSON is the exact data.
//
// # Durability
//
// The file is in WAL mode with synchronous=NORMAL and every write is one
// transaction (the Writer commits up to 256 activations per transaction).
// A committed transaction survives the process being killed (kill -9, a
// panic, the OOM killer): the WAL is written before COMMIT returns, only
// its fsync waits for the next checkpoint. On power loss or an OS crash
// the last transactions since a checkpoint may be lost, but the file is
// never corrupted: WAL recovery rolls back to the last intact commit.
// synchronous=FULL would close that window at the cost of an fsync per
// batch on the proxy's disk; the inventory does not need it, because what
// the window can lose is what the Writer's in-memory queue loses on any
// crash anyway — observations that every client repeats at its next
// renewal. What a crash loses is at most the queue and, on power loss,
// the last commits; never the file.
package inventory
