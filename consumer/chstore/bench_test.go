package chstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// BenchmarkQuantityColumn measures the Decimal(38, 9) column of one insert
// per op (benchRows rows; quantities as usage-bench makes them: 1-7 and a
// thousandth-precision token count), fed as before (the decimals Decode
// built, exponent 0 or -3, which clickhouse-go rescales) and as now
// (Fixed9 -> a cached decimal with exponent -9).
func BenchmarkQuantityColumn(b *testing.B) {
	const benchRows = 50_000
	batch := benchBatch(b)
	col := batch.Columns()[4]
	unscaled := func(i int) (int64, int32) {
		if i%4 == 3 { // tokens
			return int64(i % 100_000), -3
		}
		return int64(i%7 + 1), 0
	}
	b.Run("decoded-decimals", func(b *testing.B) {
		decs := make([]decimal.Decimal, benchRows)
		b.ReportAllocs()
		for b.Loop() {
			col.Reset()
			for i := range decs {
				v, e := unscaled(i)
				decs[i] = decimal.New(v, e) // what Decode built per event
			}
			if _, err := col.Append(decs); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRows), "ns/row")
	})
	b.Run("fixed9-cached", func(b *testing.B) {
		var eb EventBatch
		qs := make([]schemas.Fixed9, benchRows)
		for i := range qs {
			v, e := unscaled(i)
			qs[i], _ = schemas.Fixed9FromDecimal(decimal.New(v, e))
		}
		b.ReportAllocs()
		for b.Loop() {
			col.Reset()
			eb.decimals = eb.decimals[:0]
			for _, q := range qs {
				eb.decimals = append(eb.decimals, eb.decs.decimal(q))
			}
			if _, err := col.Append(eb.decimals); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRows), "ns/row")
	})
}

// BenchmarkAppendTo measures filling the insert's columns from an
// EventBatch of benchRows events as usage-bench publishes them (no
// metadata), per op one insert's worth, without sending it.
func BenchmarkAppendTo(b *testing.B) {
	const benchRows = 50_000
	batch := benchBatch(b)
	cols := batch.Columns()
	v := schemas.NewValidator()
	var view schemas.EventView
	var eb EventBatch
	for i := range benchRows {
		raw := fmt.Sprintf(`{"id":"b-%d","tenant_id":"tenant-%d","user_id":"user-%d","feature_type":"api_calls","quantity":"%d","timestamp":"2026-11-20T10:00:00.5Z"}`, i, i%50, i%500, i%7+1)
		if err := v.DecodeView([]byte(raw), &view); err != nil {
			b.Fatal(err)
		}
		eb.AppendView(&view, 0, int64(i))
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range cols {
			c.Reset()
		}
		if err := eb.appendTo(cols, now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRows), "ns/row")
}

// benchBatch prepares an insertEvents batch on a fresh migrated database,
// aborted and dropped when the benchmark ends.
func benchBatch(b *testing.B) driver.Batch {
	cfg := chconn.DefaultConfig()
	cfg.Addr = []string{testenv.ClickHouseAddr(b)}
	cfg.Database = testenv.Name("t")
	ctx := context.Background()
	s, err := Open(ctx, cfg, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.conn.Exec(ctx, "DROP DATABASE "+cfg.Database); _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	batch, err := s.conn.PrepareBatch(ctx, insertEvents)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = batch.Abort() })
	return batch
}
