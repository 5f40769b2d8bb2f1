// Package audit keeps billing-sync's ledger in ClickHouse (billing_audit):
// every Stripe write planned (pending, before the call), its result, every
// difference observed on Stripe, and every difference that can no longer
// be fixed. The pending rows are a write-ahead log: a pass killed half-way
// leaves them, and the next pass re-sends exactly those requests with the
// same idempotency keys before planning anything new.
package audit

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
)

// Actions.
const (
	Send      = "send"      // a meter event adding Delta units
	Cancel    = "cancel"    // a meter event adjustment cancelling Identifier
	Set       = "set"       // a usage record (action=set) of Stripe units
	Observe   = "observe"   // reconcile read a different value on Stripe (no call)
	Unfixable = "unfixable" // a difference Stripe no longer lets us fix (no call)
	// Checkpoint is not a window's row: a period's running totals at an
	// edge (see Checkpoints). Load skips it.
	Checkpoint = "checkpoint"
)

// Results.
const (
	Pending = "pending" // planned, the call may or may not have happened
	OK      = "ok"
	Retry   = "retry"  // transient failure after all attempts: re-sent next pass
	Failed  = "failed" // not sent: an earlier write of the window was refused
	// Refused: Stripe refused the request for good (a 4xx other than a
	// key reuse). Not re-planned while our value and target stay the same.
	Refused = "refused"
	Expired = "expired"
	// Unknown: Stripe answered idempotency_error (the key was used with
	// other parameters, e.g. by another writer): whether anything was
	// billed is unknown until Stripe is read back (reconcile). Neither
	// re-sent nor counted as failed.
	Unknown = "unknown"
)

// Row is one audit record.
type Row struct {
	Tenant, Meter, Mode string
	WindowStart         time.Time
	WindowEnd           time.Time
	Customer            string
	Target              string // meter event name, or subscription item
	Seq                 uint32
	Action              string
	Quantity            decimal.Decimal // ours, in the meter's own unit
	Ours                int64           // ours in billing units
	Stripe              int64           // Stripe's units once the action applied, or observed
	Delta               int64
	Identifier          string
	IdempotencyKey      string
	Result              string
	Error               string
	PassID              string
	At                  time.Time
}

// Store is the audit table.
type Store struct {
	conn driver.Conn
	now  func() time.Time
}

// New returns a Store on conn; now stamps rows (tests pass a fake clock).
func New(conn driver.Conn, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{conn: conn, now: now}
}

const columns = `tenant_id, meter, mode, window_start, window_end, customer, target, seq, action, quantity,
 ours, stripe, delta, identifier, idempotency_key, result, error, pass_id, at, at_ns`

// Write appends rows in one insert, stamping At when zero. Rows written
// by one call get increasing at_ns, so their order is kept.
func (s *Store) Write(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO billing_audit ("+columns+")")
	if err != nil {
		return fmt.Errorf("prepare audit insert: %w", err)
	}
	defer func() { _ = batch.Abort() }()
	now := s.now().UTC()
	for i, r := range rows {
		at := r.At
		if at.IsZero() {
			at = now
		}
		if err := batch.Append(r.Tenant, r.Meter, r.Mode, r.WindowStart.UTC(), r.WindowEnd.UTC(), r.Customer, r.Target, r.Seq,
			r.Action, r.Quantity, r.Ours, r.Stripe, r.Delta, r.Identifier, r.IdempotencyKey, r.Result, r.Error, r.PassID,
			at.Truncate(time.Second), at.UnixNano()+int64(i)); err != nil {
			return fmt.Errorf("append audit row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("write %d audit rows: %w", len(rows), err)
	}
	return nil
}

// rowsQuery reads the audit rows of windows starting in [From, To).
type rowsQuery struct {
	From, To time.Time
	Meter    string
}

func (q rowsQuery) toSQL() (string, []any) {
	return `SELECT ` + columns + ` FROM billing_audit
WHERE meter = ? AND window_start >= ? AND window_start < ?
ORDER BY tenant_id, window_start, seq, at_ns`, []any{q.Meter, q.From.UTC(), q.To.UTC()}
}

// WindowKey identifies a billed window.
type WindowKey struct {
	Tenant, Meter string
	Start         int64 // unix seconds
}

// Intent is one (window, seq): its first and newest rows.
type Intent struct {
	First  Row // the pending row: the request to re-send
	Latest Row
}

// Window is the ledger of one window.
type Window struct {
	Intents []*Intent // by seq
	// Stripe is what Stripe holds for the window per the ledger: the
	// Stripe value of the newest successful intent.
	Stripe  int64
	NextSeq uint32
	// LastWrite is when the newest successful call was made (summaries
	// may not show it until they settle).
	LastWrite time.Time
}

// Pending returns the intents whose outcome is unknown or transiently
// failed: the next pass re-sends them before planning anything new.
func (w *Window) Pending() []*Intent {
	var out []*Intent
	for _, in := range w.Intents {
		if in.Latest.Result == Pending || in.Latest.Result == Retry {
			out = append(out, in)
		}
	}
	return out
}

// Unknown returns the intents whose outcome is unknown (idempotency_error):
// nothing new is planned for the window until reconcile reads Stripe back.
func (w *Window) Unknown() []*Intent {
	var out []*Intent
	for _, in := range w.Intents {
		if in.Latest.Result == Unknown {
			out = append(out, in)
		}
	}
	return out
}

// LastRefused returns the newest intent's row if Stripe refused it (or it
// was not sent because an earlier write of the window was refused).
func (w *Window) LastRefused() *Row {
	for i := len(w.Intents) - 1; i >= 0; i-- {
		in := w.Intents[i]
		switch {
		case in.Latest.Action == Observe || in.Latest.Action == Unfixable:
			continue
		case in.Latest.Result == Refused || in.Latest.Result == Failed:
			return &w.Intents[i].Latest
		}
		return nil
	}
	return nil
}

// LastUnfixable returns the newest intent if it is an unfixable report.
func (w *Window) LastUnfixable() *Row {
	if n := len(w.Intents); n > 0 && w.Intents[n-1].Latest.Action == Unfixable {
		return &w.Intents[n-1].Latest
	}
	return nil
}

// Sends returns the successful, not cancelled meter events of the window.
func (w *Window) Sends() []Row {
	cancelled := map[string]bool{}
	for _, in := range w.Intents {
		if in.Latest.Action == Cancel && in.Latest.Result == OK {
			cancelled[in.Latest.Identifier] = true
		}
	}
	var out []Row
	for _, in := range w.Intents {
		if in.Latest.Action == Send && in.Latest.Result == OK && !cancelled[in.Latest.Identifier] {
			out = append(out, in.First)
		}
	}
	return out
}

// Load folds the audit rows of one meter's windows in [from, to).
func (s *Store) Load(ctx context.Context, meter string, from, to time.Time) (map[WindowKey]*Window, error) {
	sql, args := rowsQuery{From: from, To: to, Meter: meter}.toSQL()
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read billing_audit: %w", err)
	}
	defer rs.Close()
	out := map[WindowKey]*Window{}
	intents := map[WindowKey]map[uint32]*Intent{}
	for rs.Next() {
		var r Row
		var atNs int64
		if err := rs.Scan(&r.Tenant, &r.Meter, &r.Mode, &r.WindowStart, &r.WindowEnd, &r.Customer, &r.Target, &r.Seq,
			&r.Action, &r.Quantity, &r.Ours, &r.Stripe, &r.Delta, &r.Identifier, &r.IdempotencyKey, &r.Result, &r.Error,
			&r.PassID, &r.At, &atNs); err != nil {
			return nil, fmt.Errorf("scan billing_audit: %w", err)
		}
		if r.Action == Checkpoint {
			continue
		}
		r.At = time.Unix(0, atNs).UTC()
		r.WindowStart, r.WindowEnd = r.WindowStart.UTC(), r.WindowEnd.UTC()
		k := WindowKey{r.Tenant, r.Meter, r.WindowStart.Unix()}
		if intents[k] == nil {
			intents[k] = map[uint32]*Intent{}
		}
		in := intents[k][r.Seq]
		if in == nil {
			in = &Intent{First: r}
			intents[k][r.Seq] = in
		}
		// An ok row is final: Stripe applied the intent, and a later row
		// (a re-send by another process refused as a key reuse, a late
		// failure) cannot undo that; letting it would bill the window again.
		// A pending row is the intent itself, never an outcome: when it
		// ties with its result on at_ns (one clock instant; ClickHouse
		// orders ties arbitrarily) it must not hide that result.
		if r.Result == Pending && in.First.Result != Pending {
			in.First = r
		}
		if in.Latest.Result != OK && (r.Result != Pending || in.Latest.Result == Pending || in.Latest.Result == "") {
			in.Latest = r
		}
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("read billing_audit: %w", err)
	}
	for k, byseq := range intents {
		w := &Window{}
		for _, in := range byseq {
			w.Intents = append(w.Intents, in)
		}
		sort.Slice(w.Intents, func(i, j int) bool { return w.Intents[i].First.Seq < w.Intents[j].First.Seq })
		for _, in := range w.Intents {
			w.NextSeq = in.First.Seq + 1
			if in.Latest.Result == OK && in.Latest.Action != Unfixable {
				w.Stripe = in.Latest.Stripe
				if in.Latest.Action != Observe {
					w.LastWrite = in.Latest.At
				}
			}
		}
		out[k] = w
	}
	return out, nil
}

// checkpointsQuery reads the checkpoint rows of one meter with edges in
// [From, To].
type checkpointsQuery struct {
	From, To time.Time
	Meter    string
}

func (q checkpointsQuery) toSQL() (string, []any) {
	return `SELECT tenant_id, window_start, window_end, quantity, ours, stripe, delta, at_ns FROM billing_audit
WHERE meter = ? AND action = ? AND window_start >= ? AND window_start <= ?`, []any{q.Meter, Checkpoint, q.From.UTC(), q.To.UTC()}
}

// PeriodTotals is one tenant's period as of an edge: the running total of
// the meter's quantity from the period start to the edge, and what the
// ledger says Stripe holds for the windows before the edge.
type PeriodTotals struct {
	Tenant                 string
	PeriodStart, PeriodEnd time.Time
	Quantity               decimal.Decimal
	Held                   int64
	// LatestNs: a usage_records meter of aggregation latest, the event
	// time of the value in Quantity (the newest event wins).
	LatestNs int64
}

// CheckpointRow encodes totals at edge as a ledger row: window_start is
// the edge (so a read of a few days finds it), window_end the period
// start, ours the period end (unix seconds), delta LatestNs.
func CheckpointRow(meter, mode, passID string, edge time.Time, t PeriodTotals) Row {
	return Row{Tenant: t.Tenant, Meter: meter, Mode: mode, WindowStart: edge, WindowEnd: t.PeriodStart, Action: Checkpoint,
		Quantity: t.Quantity, Ours: t.PeriodEnd.Unix(), Stripe: t.Held, Delta: t.LatestNs, Result: OK, PassID: passID}
}

// Checkpoints returns the newest edge in [from, to] holding checkpoints of
// the meter, and its totals per tenant and period start (the newest row
// of each wins: a reconcile's full read rewrites them).
func (s *Store) Checkpoints(ctx context.Context, meter string, from, to time.Time) (time.Time, map[string]map[int64]PeriodTotals, error) {
	sql, args := checkpointsQuery{From: from, To: to, Meter: meter}.toSQL()
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("read checkpoints: %w", err)
	}
	defer rs.Close()
	type row struct {
		t    PeriodTotals
		edge time.Time
		atNs int64
	}
	var rows []row
	var edge time.Time
	for rs.Next() {
		var r row
		var end int64
		if err := rs.Scan(&r.t.Tenant, &r.edge, &r.t.PeriodStart, &r.t.Quantity, &end, &r.t.Held, &r.t.LatestNs, &r.atNs); err != nil {
			return time.Time{}, nil, fmt.Errorf("scan checkpoints: %w", err)
		}
		r.edge, r.t.PeriodStart, r.t.PeriodEnd = r.edge.UTC(), r.t.PeriodStart.UTC(), time.Unix(end, 0).UTC()
		if r.edge.After(edge) {
			edge = r.edge
		}
		rows = append(rows, r)
	}
	if err := rs.Err(); err != nil {
		return time.Time{}, nil, fmt.Errorf("read checkpoints: %w", err)
	}
	out := map[string]map[int64]PeriodTotals{}
	newest := map[string]map[int64]int64{}
	for _, r := range rows {
		if !r.edge.Equal(edge) {
			continue
		}
		if out[r.t.Tenant] == nil {
			out[r.t.Tenant], newest[r.t.Tenant] = map[int64]PeriodTotals{}, map[int64]int64{}
		}
		if k := r.t.PeriodStart.Unix(); r.atNs >= newest[r.t.Tenant][k] {
			out[r.t.Tenant][k], newest[r.t.Tenant][k] = r.t, r.atNs
		}
	}
	return edge, out, nil
}
