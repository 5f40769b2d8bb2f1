package usageread

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Row is one window of one meter (and user or metadata value). Value is
// the exact decimal text ClickHouse holds: never a float.
type Row struct {
	Window      time.Time `json:"window_start"`
	Meter       string    `json:"meter"`
	Aggregation string    `json:"aggregation"`
	Group       string    `json:"group,omitempty"` // the user or metadata value; "" when grouped by meter
	Value       string    `json:"value"`
	Events      uint64    `json:"events"`
}

// Page is one page of rows; Next is the cursor of the next one ("" at the end).
type Page struct {
	Rows []Row  `json:"rows"`
	Next string `json:"next_cursor,omitempty"`
}

// Reader reads usage from ClickHouse with a read-only connection.
type Reader struct {
	conn                        driver.Conn
	plans                       *plans.Config
	notUser, notMetadata, count []string
}

// NewReader returns a Reader on conn for the meters of p.
func NewReader(conn driver.Conn, p *plans.Config) *Reader {
	r := &Reader{conn: conn, plans: p}
	r.notUser, r.notMetadata, r.count = metersFor(p)
	return r
}

// Read returns the page of rows req asks for.
func (rd *Reader) Read(ctx context.Context, req Request) (Page, error) {
	var sql string
	var args []any
	switch {
	case req.MetadataKey != "":
		sql, args = metadataQuery{Req: req, Exclude: rd.notMetadata, Counts: rd.count}.toSQL()
	case req.GroupBy == ByUser:
		sql, args = windowQuery{Req: req, Exclude: rd.notUser}.toSQL()
	default:
		sql, args = windowQuery{Req: req}.toSQL()
	}
	rs, err := rd.conn.Query(ctx, sql, args...)
	if err != nil {
		return Page{}, fmt.Errorf("read usage of %q: %w", req.Tenant, err)
	}
	defer rs.Close()
	page := Page{Rows: []Row{}}
	for rs.Next() {
		var r Row
		if err := rs.Scan(&r.Window, &r.Meter, &r.Aggregation, &r.Group, &r.Value, &r.Events); err != nil {
			return Page{}, fmt.Errorf("scan usage row: %w", err)
		}
		r.Window = r.Window.UTC()
		// ClickHouse prints Decimal(38, 9) with all nine places; the exact
		// value in its shortest form reads better and compares as text.
		d, err := decimal.NewFromString(r.Value)
		if err != nil {
			return Page{}, fmt.Errorf("usage value %q: %w", r.Value, err)
		}
		r.Value = d.String()
		if r.Aggregation == "" {
			m, _ := rd.plans.MeterFor(r.Meter)
			r.Aggregation = string(m.Aggregation)
		}
		page.Rows = append(page.Rows, r)
	}
	if err := rs.Err(); err != nil {
		return Page{}, fmt.Errorf("read usage rows: %w", err)
	}
	if len(page.Rows) > req.Limit { // one more than asked: there is a next page
		page.Rows = page.Rows[:req.Limit]
		page.Next = EncodeCursor(req.Offset + req.Limit)
	}
	return page, nil
}

// CSVHeader is the first line of every CSV answer.
var CSVHeader = []string{"window_start", "meter", "aggregation", "group", "value", "events"}

// formulaStart are the first characters that make Excel, Sheets or
// LibreOffice read a cell as a formula (OWASP, "CSV Injection").
const formulaStart = "=+-@\t\r"

// SafeCell neutralises tenant text for a spreadsheet: a cell starting with
// a formula character gets a leading single quote, the OWASP rule, which
// spreadsheets show as text. Only the group column (a user id or metadata
// value) is tenant text: meters match ^[a-z], aggregations and windows are
// ours, and value and events are numbers (decimal.String, so a "-" there
// starts a number, never a formula).
func SafeCell(s string) string {
	if s != "" && strings.IndexByte(formulaStart, s[0]) >= 0 {
		return "'" + s
	}
	return s
}

// WriteCSV writes rows as RFC 4180 CSV (encoding/csv quotes what needs it),
// with the header when header is true. Groups go through SafeCell.
func WriteCSV(w io.Writer, rows []Row, header bool) error {
	cw := csv.NewWriter(w)
	if header {
		if err := cw.Write(CSVHeader); err != nil {
			return err
		}
	}
	for _, r := range rows {
		if err := cw.Write([]string{r.Window.Format(time.RFC3339), r.Meter, r.Aggregation, SafeCell(r.Group), r.Value,
			strconv.FormatUint(r.Events, 10)}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
