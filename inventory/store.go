package inventory

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SchemaVersion is the version of the database layout this build writes
// and reads. A file with a larger schema_version was written by a newer
// build and is refused (ErrSchema) rather than misread.
const SchemaVersion = 1

// busyTimeout is how long a statement waits for another connection's (or
// process's) lock before it fails with SQLITE_BUSY.
const busyTimeout = 5 * time.Second

// maxField bounds every stored string. The decoder already bounds what
// comes off the wire (a KMS workstation name is at most 64 UTF-16 units);
// this keeps a misbehaving caller from growing the file without bound.
const maxField = 4096

var (
	// ErrNotWritable is wrapped by Open when the database file cannot be
	// created or opened for writing (missing directory, permissions, a
	// directory in its place, a read-only file system).
	ErrNotWritable = errors.New("inventory database not writable")

	// ErrSchema is wrapped when the file is not a kmsproxy inventory this
	// build understands: not a SQLite database, another program's database,
	// or one written by a newer schema version.
	ErrSchema = errors.New("inventory database schema")

	// ErrInvalid is wrapped by Record for an activation without a client
	// machine ID or application ID (the key of a row); such activations are
	// skipped, the others are written.
	ErrInvalid = errors.New("invalid activation")

	// ErrReadOnly is returned by the writing methods of a Store opened with
	// OpenReadOnly.
	ErrReadOnly = errors.New("inventory opened read-only")
)

// Options configure a Store opened for writing.
type Options struct {
	// StoreWorkstation keeps the workstation name as the client sent it.
	// False keeps only "sha256:" and the first 16 bytes (hex) of
	// HMAC-SHA256(salt, case-folded name), with a random 32-byte salt made
	// once per database: the same name maps to the same value in one
	// database and to unrelated values in two.
	StoreWorkstation bool

	// Retention prunes rows whose last_seen is older than this (Prune, and
	// the Writer hourly). 0 keeps rows forever.
	Retention time.Duration

	// Now is the clock (tests); nil is time.Now. It stamps activations that
	// carry no Time.
	Now func() time.Time
}

// Store is one inventory database. It is safe for concurrent use; each
// write is one SQLite transaction.
type Store struct {
	db       *sql.DB
	path     string
	opts     Options
	salt     []byte
	readOnly bool

	// beforeRecord, when set (tests), runs at the start of every Record.
	beforeRecord func()
}

// Open opens the inventory at path for reading and writing, creating the
// file (never its directory) when missing, in WAL mode with
// synchronous=NORMAL, and creating or checking the schema.
func Open(path string, o Options) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("inventory: open: %w: empty path", ErrNotWritable)
	}
	// Create (or check) the file ourselves first: SQLite's own error for a
	// missing directory is a bare "unable to open database file", and it
	// would also happily open a file read-only when it cannot write it.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w: %w", path, ErrNotWritable, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w: %w", path, ErrNotWritable, err)
	}

	q := "mode=rw" +
		"&_pragma=" + pragmaArg("busy_timeout", strconv.FormatInt(busyTimeout.Milliseconds(), 10)) +
		"&_pragma=" + pragmaArg("synchronous", "NORMAL") +
		"&_txlock=immediate"
	db, err := sql.Open("sqlite", fileURI(path)+"?"+q)
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path, opts: o}
	if s.opts.Now == nil {
		s.opts.Now = time.Now
	}
	if err := s.initWritable(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// OpenReadOnly opens an existing inventory for reading only (the CLI). It
// works while another process has the file open for writing: WAL lets
// readers see the last committed state without blocking the writer. A
// missing file is an error wrapping fs.ErrNotExist.
func OpenReadOnly(path string) (*Store, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("inventory: open %s: %w: is a directory", path, ErrSchema)
	}
	q := "mode=ro" +
		"&_pragma=" + pragmaArg("busy_timeout", strconv.FormatInt(busyTimeout.Milliseconds(), 10)) +
		"&_pragma=" + pragmaArg("query_only", "1")
	db, err := sql.Open("sqlite", fileURI(path)+"?"+q)
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path, readOnly: true, opts: Options{Now: time.Now}}
	if err := s.initReadOnly(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Path is the file the store was opened on.
func (s *Store) Path() string { return s.path }

// Close closes the database. The last connection to close checkpoints the
// WAL into the main file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("inventory: close %s: %w", s.path, err)
	}
	return nil
}

// fileURI turns a path into a SQLite URI (file:…) with every byte that
// could end the path (?, #) or be decoded (%) percent-encoded.
func fileURI(path string) string {
	p := filepath.ToSlash(path)
	if filepath.VolumeName(path) != "" {
		p = "/" + p // file:///C:/…
	}
	var b strings.Builder
	b.WriteString("file:")
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '/', c == '.', c == '-', c == '_', c == '~', c == ':':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// pragmaArg is one _pragma value of the driver's DSN, query-escaped.
func pragmaArg(name, value string) string { return name + "(" + value + ")" }

const schemaV1 = `
CREATE TABLE activation (
	cmid               TEXT    NOT NULL,
	application_id     TEXT    NOT NULL,
	application        TEXT    NOT NULL,
	workstation        TEXT    NOT NULL,
	sku_id             TEXT    NOT NULL,
	sku                TEXT    NOT NULL,
	kms_counted_id     TEXT    NOT NULL,
	kms_counted_name   TEXT    NOT NULL,
	license_status     TEXT    NOT NULL COLLATE NOCASE,
	virtual_machine    INTEGER NOT NULL,
	kms_version        INTEGER NOT NULL,
	first_seen         INTEGER NOT NULL, -- Unix nanoseconds
	last_seen          INTEGER NOT NULL, -- Unix nanoseconds
	requests           INTEGER NOT NULL,
	last_source        TEXT    NOT NULL,
	last_zone          TEXT    NOT NULL COLLATE NOCASE,
	last_rule          TEXT    NOT NULL,
	last_result        TEXT    NOT NULL,
	last_hresult       TEXT    NOT NULL,
	last_hresult_name  TEXT    NOT NULL,
	host_current_count INTEGER NOT NULL,
	host_epid          TEXT    NOT NULL,
	host_seen          INTEGER NOT NULL, -- Unix nanoseconds of the reply host_* came from; 0 none
	PRIMARY KEY (cmid, application_id)
);
CREATE INDEX activation_last_seen ON activation (last_seen);
CREATE INDEX activation_zone ON activation (last_zone, last_seen);
CREATE INDEX activation_status ON activation (license_status, last_seen);
`

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// checkVersion reads the file's schema_version and says whether the file
// is empty (no tables at all: a new inventory to create). Any other file
// without a version, or with one this build cannot read, is ErrSchema.
func (s *Store) checkVersion(ctx context.Context, q querier) (empty bool, err error) {
	version, found, err := readVersion(ctx, q)
	if err != nil {
		return false, s.wrapOpen(err)
	}
	switch {
	case !found:
		var tables int
		if err := q.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table'`).Scan(&tables); err != nil {
			return false, s.wrapOpen(err)
		}
		if tables > 0 || s.readOnly {
			return false, fmt.Errorf("inventory: open %s: %w: not a kmsproxy inventory (no schema_version)", s.path, ErrSchema)
		}
		return true, nil
	case version > SchemaVersion:
		return false, fmt.Errorf("inventory: open %s: %w: schema_version %d is newer than this build's %d (written by a newer kmsproxy)",
			s.path, ErrSchema, version, SchemaVersion)
	case version < 1:
		return false, fmt.Errorf("inventory: open %s: %w: bad schema_version %d", s.path, ErrSchema, version)
	}
	return false, nil
}

// initWritable checks the file, switches it to WAL, and creates the schema
// in a new file; it changes nothing in a file it refuses. The creation is
// one immediate transaction that checks again, so two processes opening a
// new file at once cannot both create it.
func (s *Store) initWritable(ctx context.Context) error {
	if _, err := s.checkVersion(ctx, s.db); err != nil {
		return err
	}
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
		return s.wrapOpen(err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("inventory: open %s: journal_mode is %q, want wal", s.path, mode)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.wrapOpen(err)
	}
	defer tx.Rollback()
	empty, err := s.checkVersion(ctx, tx)
	if err != nil {
		return err
	}
	if empty {
		salt := make([]byte, 32)
		if _, err := rand.Read(salt); err != nil {
			return fmt.Errorf("inventory: open %s: salt: %w", s.path, err)
		}
		for _, q := range []string{`CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID`, schemaV1} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return s.wrapOpen(fmt.Errorf("create schema: %w", err))
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('schema_version', ?), ('workstation_salt', ?)`,
			strconv.Itoa(SchemaVersion), salt); err != nil {
			return s.wrapOpen(fmt.Errorf("create schema: %w", err))
		}
	}
	if s.salt, err = readSalt(ctx, tx); err != nil {
		return s.wrapOpen(err)
	}
	if err := tx.Commit(); err != nil {
		return s.wrapOpen(err)
	}
	return nil
}

func (s *Store) initReadOnly(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return s.wrapOpen(err)
	}
	defer tx.Rollback()
	if _, err := s.checkVersion(ctx, tx); err != nil {
		return err
	}
	if s.salt, err = readSalt(ctx, tx); err != nil {
		return s.wrapOpen(err)
	}
	return nil
}

// readVersion reads meta.schema_version; found is false when there is no
// meta table or no such key.
func readVersion(ctx context.Context, tx querier) (version int, found bool, err error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'`).Scan(&n); err != nil {
		return 0, false, err
	}
	if n == 0 {
		return 0, false, nil
	}
	var v string
	err = tx.QueryRowContext(ctx, `SELECT CAST(value AS TEXT) FROM meta WHERE key = 'schema_version'`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	version, err = strconv.Atoi(v)
	if err != nil {
		return 0, true, fmt.Errorf("%w: schema_version %q is not a number", ErrSchema, v)
	}
	return version, true, nil
}

func readSalt(ctx context.Context, tx querier) ([]byte, error) {
	var salt []byte
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'workstation_salt'`).Scan(&salt); err != nil {
		return nil, fmt.Errorf("%w: workstation_salt: %w", ErrSchema, err)
	}
	if len(salt) < 16 {
		return nil, fmt.Errorf("%w: workstation_salt is %d bytes", ErrSchema, len(salt))
	}
	return salt, nil
}

// wrapOpen gives an error met while opening its context; a file that is
// not a database also wraps ErrSchema, and one SQLite cannot open or write
// (a read-only file or directory: no room for the -wal and -shm files)
// ErrNotWritable when opening for writing.
func (s *Store) wrapOpen(err error) error {
	if errors.Is(err, ErrSchema) || errors.Is(err, ErrNotWritable) {
		return fmt.Errorf("inventory: open %s: %w", s.path, err)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("inventory: open %s: %w: not a SQLite database: %w", s.path, ErrSchema, err)
		case sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM:
			if !s.readOnly {
				return fmt.Errorf("inventory: open %s: %w: %w", s.path, ErrNotWritable, err)
			}
		}
	}
	return fmt.Errorf("inventory: open %s: %w", s.path, err)
}

// HashWorkstation is the value stored for name with StoreWorkstation
// false: "sha256:" and the first 16 bytes, hex, of HMAC-SHA256 keyed with
// this database's salt over the case-folded name. "" stays "".
func (s *Store) HashWorkstation(name string) string {
	if name == "" {
		return ""
	}
	m := hmac.New(sha256.New, s.salt)
	m.Write([]byte(foldName(name)))
	return "sha256:" + hex.EncodeToString(m.Sum(nil)[:16])
}

// foldName is the case-folded form of a workstation name: NetBIOS and DNS
// names compare without case.
func foldName(name string) string { return strings.ToLower(strings.ToUpper(name)) }

// clip cuts s to at most maxField bytes on a rune boundary.
func clip(s string) string {
	if len(s) <= maxField {
		return s
	}
	i := maxField
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// upsertColumns are the columns an activation writes, in bind order.
var upsertColumns = []string{
	"cmid", "application_id", "application", "workstation", "sku_id", "sku",
	"kms_counted_id", "kms_counted_name", "license_status", "virtual_machine", "kms_version",
	"first_seen", "last_seen", "requests",
	"last_source", "last_zone", "last_rule", "last_result", "last_hresult", "last_hresult_name",
	"host_current_count", "host_epid", "host_seen",
}

// lastColumns are overwritten by an observation at least as new as the
// row's last_seen, and kept when an older one arrives late.
var lastColumns = []string{
	"application", "workstation", "sku_id", "sku", "kms_counted_id", "kms_counted_name",
	"license_status", "virtual_machine", "kms_version",
	"last_source", "last_zone", "last_rule", "last_result", "last_hresult", "last_hresult_name",
}

// upsertSQL is built once from the column lists (names only: every value
// is a bound parameter).
var upsertSQL = func() string {
	var b strings.Builder
	b.WriteString("INSERT INTO activation (")
	b.WriteString(strings.Join(upsertColumns, ", "))
	b.WriteString(") VALUES (")
	for i := range upsertColumns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("?")
	}
	b.WriteString(") ON CONFLICT (cmid, application_id) DO UPDATE SET\n")
	for _, c := range lastColumns {
		fmt.Fprintf(&b, "\t%[1]s = CASE WHEN excluded.last_seen >= activation.last_seen THEN excluded.%[1]s ELSE activation.%[1]s END,\n", c)
	}
	for _, c := range []string{"host_current_count", "host_epid"} {
		fmt.Fprintf(&b, "\t%[1]s = CASE WHEN excluded.host_seen > 0 AND excluded.host_seen >= activation.host_seen THEN excluded.%[1]s ELSE activation.%[1]s END,\n", c)
	}
	b.WriteString("\thost_seen = max(activation.host_seen, excluded.host_seen),\n")
	b.WriteString("\tfirst_seen = min(activation.first_seen, excluded.first_seen),\n")
	b.WriteString("\tlast_seen = max(activation.last_seen, excluded.last_seen),\n")
	b.WriteString("\trequests = activation.requests + 1")
	return b.String()
}()

// Record writes activations in one transaction: per (client machine ID,
// application ID) the row's first_seen is kept, last_seen is the latest,
// requests counts the observations, and the other last-observed fields
// come from the newest observation (a late older one does not regress
// them). The host's current count and ePID change only with an activation
// that carried a successful reply. Activations without a CMID or
// application ID are skipped and reported by an error wrapping ErrInvalid
// after the others are committed.
func (s *Store) Record(ctx context.Context, acts []Activation) error {
	_, err := s.record(ctx, acts)
	return err
}

// record is Record that also says how many activations it committed.
func (s *Store) record(ctx context.Context, acts []Activation) (int, error) {
	if s.readOnly {
		return 0, fmt.Errorf("inventory: record: %w", ErrReadOnly)
	}
	if s.beforeRecord != nil {
		s.beforeRecord()
	}
	if len(acts) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("inventory: record: begin: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, upsertSQL)
	if err != nil {
		return 0, fmt.Errorf("inventory: record: prepare: %w", err)
	}
	defer stmt.Close()
	written, invalid := 0, 0
	args := make([]any, len(upsertColumns))
	for i := range acts {
		if !s.bind(&acts[i], args) {
			invalid++
			continue
		}
		if _, err := stmt.ExecContext(ctx, args...); err != nil {
			return 0, fmt.Errorf("inventory: record %s/%s: %w", args[0], args[1], err)
		}
		written++
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("inventory: record: commit: %w", err)
	}
	if invalid > 0 {
		return written, fmt.Errorf("inventory: record: %w: %d of %d without a client machine ID or application ID skipped",
			ErrInvalid, invalid, len(acts))
	}
	return written, nil
}

// bind fills args (in upsertColumns order) from a; false for an
// activation without a key.
func (s *Store) bind(a *Activation, args []any) bool {
	o, ok := s.observe(a)
	if !ok {
		return false
	}
	copy(args, []any{
		o.cmid, o.appID, o.application, o.workstation, o.skuID, o.sku,
		o.countedID, o.countedName, o.status, o.vm, o.version,
		o.ns, o.ns, int64(1),
		o.source, o.zone, o.rule, o.result, o.hr, o.hrName,
		o.count, o.epid, o.hostSeen,
	})
	return true
}

// observation is what one activation writes to its row, normalized: keys
// lower-cased, strings clipped, the workstation hashed unless stored, the
// host's fields only from a reply that carried them. Record and the
// shared rows (SharedRowOf) both take their values from here.
type observation struct {
	cmid, appID, application, workstation, skuID, sku string
	countedID, countedName, status                    string
	vm                                                int
	version, ns                                       int64
	source, zone, rule, result, hr, hrName            string
	count                                             int64
	epid                                              string
	hostSeen                                          int64 // unix ns of the reply that set count and epid; 0: none
}

// observe normalizes a; false for an activation without a key.
func (s *Store) observe(a *Activation) (observation, bool) {
	cmid := strings.ToLower(strings.TrimSpace(a.CMID))
	appID := strings.ToLower(strings.TrimSpace(a.ApplicationID))
	if cmid == "" || appID == "" {
		return observation{}, false
	}
	t := a.Time
	if t.IsZero() {
		t = s.opts.Now()
	}
	ns := t.UnixNano()
	ws := clip(a.Workstation)
	if !s.opts.StoreWorkstation {
		ws = s.HashWorkstation(ws)
	}
	var source string
	if a.Source.IsValid() {
		source = a.Source.Unmap().String()
	}
	var hr, hrName string
	if a.HostReplied {
		hr = fmt.Sprintf("0x%08X", a.HRESULT)
		hrName = clip(a.HRESULTName)
	}
	var count int64
	var epid string
	var hostSeen int64
	if a.EPID != "" || a.Result == "success" {
		count, epid, hostSeen = int64(a.CurrentCount), clip(a.EPID), ns
		if hostSeen <= 0 {
			hostSeen = 1 // before 1970: still "a reply was seen"
		}
	}
	vm := 0
	if a.VirtualMachine {
		vm = 1
	}
	return observation{
		cmid: clip(cmid), appID: clip(appID), application: clip(a.Application), workstation: ws,
		skuID: clip(a.SKUID), sku: clip(a.SKU), countedID: clip(a.KMSCountedID), countedName: clip(a.KMSCountedName),
		status: clip(a.LicenseStatus), vm: vm, version: int64(a.Version), ns: ns,
		source: source, zone: clip(a.Zone), rule: clip(a.Rule), result: clip(a.Result), hr: hr, hrName: hrName,
		count: count, epid: epid, hostSeen: hostSeen,
	}, true
}

const rowColumns = `cmid, application_id, application, workstation, sku_id, sku, kms_counted_id, kms_counted_name,
	license_status, virtual_machine, kms_version, first_seen, last_seen, requests, last_source, last_zone,
	last_rule, last_result, last_hresult, last_hresult_name, host_current_count, host_epid`

// likeEscape makes s match itself literally inside a LIKE pattern with
// ESCAPE '\'.
func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

// Query returns the rows f selects, newest last_seen first. Comparisons
// are case-insensitive for ASCII letters (SQLite's NOCASE and LIKE).
func (s *Store) Query(ctx context.Context, f Filter) ([]Row, error) {
	var where []string
	var args []any
	if !f.Since.IsZero() {
		where = append(where, "last_seen >= ?")
		args = append(args, f.Since.UnixNano())
	}
	if f.Zone != "" {
		where = append(where, "last_zone = ?")
		args = append(args, f.Zone)
	}
	if f.Status != "" {
		where = append(where, "license_status = ?")
		args = append(args, f.Status)
	}
	if f.Application != "" {
		where = append(where, `(application LIKE ? ESCAPE '\' OR application_id = lower(?))`)
		args = append(args, "%"+likeEscape(f.Application)+"%", strings.TrimSpace(f.Application))
	}
	if f.Search != "" {
		p := "%" + likeEscape(f.Search) + "%"
		// With hashed names, a full name typed in the search still finds
		// its rows.
		where = append(where, `(workstation LIKE ? ESCAPE '\' OR cmid LIKE ? ESCAPE '\' OR sku LIKE ? ESCAPE '\'
			OR application LIKE ? ESCAPE '\' OR last_source LIKE ? ESCAPE '\' OR workstation = ?)`)
		var hashed any // NULL matches nothing
		if h := s.HashWorkstation(strings.TrimSpace(f.Search)); h != "" {
			hashed = h
		}
		args = append(args, p, p, p, p, p, hashed)
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	// Size the result first: growing a slice of 100,000 Rows by doubling
	// costs more than the count (an index scan) saves — but not when a
	// substring search must read every row twice.
	size := 0
	switch {
	case f.Limit > 0 && f.Limit <= 1024:
		size = f.Limit
	case f.Search == "":
		if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM activation"+cond, args...).Scan(&size); err != nil {
			return nil, fmt.Errorf("inventory: query: %w", err)
		}
		if f.Limit > 0 {
			size = min(size, f.Limit)
		}
	}
	q := "SELECT " + rowColumns + " FROM activation" + cond + " ORDER BY last_seen DESC"
	if f.Limit > 0 {
		q += " LIMIT ?"
		args = append(args, f.Limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("inventory: query: %w", err)
	}
	defer rows.Close()
	out := make([]Row, 0, size)
	for rows.Next() {
		var r Row
		var vm, version, first, last, count int64
		if err := rows.Scan(&r.CMID, &r.ApplicationID, &r.Application, &r.Workstation, &r.SKUID, &r.SKU,
			&r.KMSCountedID, &r.KMSCountedName, &r.LicenseStatus, &vm, &version, &first, &last, &r.Requests,
			&r.LastSource, &r.LastZone, &r.LastRule, &r.LastResult, &r.LastHRESULT, &r.LastHRESULTName,
			&count, &r.EPID); err != nil {
			return nil, fmt.Errorf("inventory: query: %w", err)
		}
		r.VirtualMachine = vm != 0
		r.Version = uint16(version)
		r.FirstSeen = time.Unix(0, first).UTC()
		r.LastSeen = time.Unix(0, last).UTC()
		r.CurrentCount = uint32(count)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inventory: query: %w", err)
	}
	return out, nil
}

// Count is the number of rows.
func (s *Store) Count(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM activation`).Scan(&n); err != nil {
		return 0, fmt.Errorf("inventory: count: %w", err)
	}
	return n, nil
}

// Prune deletes the rows whose last_seen is older than now less the
// Retention, and says how many; with Retention 0 it deletes nothing.
func (s *Store) Prune(ctx context.Context, now time.Time) (int, error) {
	if s.readOnly {
		return 0, fmt.Errorf("inventory: prune: %w", ErrReadOnly)
	}
	if s.opts.Retention <= 0 {
		return 0, nil
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM activation WHERE last_seen < ?`, now.Add(-s.opts.Retention).UnixNano())
	if err != nil {
		return 0, fmt.Errorf("inventory: prune: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("inventory: prune: %w", err)
	}
	return int(n), nil
}

// IntegrityCheck runs PRAGMA integrity_check and returns its answer ("ok"
// for a sound file).
func (s *Store) IntegrityCheck(ctx context.Context) (string, error) {
	rows, err := s.db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return "", fmt.Errorf("inventory: integrity check: %w", err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return "", fmt.Errorf("inventory: integrity check: %w", err)
		}
		lines = append(lines, l)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("inventory: integrity check: %w", err)
	}
	return strings.Join(lines, "\n"), nil
}
