package syncer_test

import (
	"context"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
)

// TestLedgerPendingNeverHidesItsOutcome: the intent (pending) and its
// outcome (refused) of one seq written at one clock instant tie on at_ns
// but for the row's index in its batch; here the pending row sorts after
// the refusal. The window must still show the refusal, not a pending
// intent to re-send (which re-sent a refused write to a deleted item).
func TestLedgerPendingNeverHidesItsOutcome(t *testing.T) {
	e := newEnv(t)
	at := time.Date(2027, 1, 15, 21, 32, 0, 0, time.UTC)
	st := audit.New(e.conn, func() time.Time { return at })
	ws := time.Date(2027, 1, 15, 14, 32, 0, 0, time.UTC)
	row := func(seq uint32, result string) audit.Row {
		return audit.Row{Tenant: "acme", Meter: "storage", Mode: "usage_records", WindowStart: ws, WindowEnd: ws.AddDate(0, 1, 0),
			Customer: "cus_acme", Target: "si_old", Seq: seq, Action: audit.Set, Quantity: decimal.NewFromInt(450), Ours: 450,
			Stripe: 450, Delta: 450, Result: result}
	}
	ctx := context.Background()
	if err := st.Write(ctx, []audit.Row{row(1, audit.Refused)}); err != nil { // at_ns = at + 0
		t.Fatal(err)
	}
	if err := st.Write(ctx, []audit.Row{row(0, audit.OK), row(1, audit.Pending)}); err != nil { // the pending row: at + 1
		t.Fatal(err)
	}
	ledger, err := st.Load(ctx, "storage", ws, ws.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	lw := ledger[audit.WindowKey{Tenant: "acme", Meter: "storage", Start: ws.Unix()}]
	if lw == nil {
		t.Fatal("window not loaded")
	}
	if p := lw.Pending(); len(p) != 0 {
		t.Errorf("%d pending intents, want 0: the refusal of seq 1 is its outcome", len(p))
	}
	if r := lw.LastRefused(); r == nil || r.Seq != 1 {
		t.Errorf("last refused = %+v, want seq 1", r)
	}
	if lw.NextSeq != 2 || lw.Stripe != 450 {
		t.Errorf("next seq %d, Stripe %d; want 2 and 450 (seq 0 ok)", lw.NextSeq, lw.Stripe)
	}
}
