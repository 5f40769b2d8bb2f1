package server_test

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// browser starts Debian's headless chromium (scripts/deps.sh installs it).
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed: run scripts/deps.sh chromium (%v)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(900, 1400), chromedp.Flag("disable-gpu", true))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel3)
	return ctx
}

// screenshot keeps the page as a test artifact under the git-ignored .cache.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(testenv.RepoRoot(t), ".cache", "artifacts", "usage-pages")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", filepath.Join(dir, name+".png"))
}

// fetchJS fetches a URL from the page (its cookie goes along) and returns
// "status\nbody".
func fetchJS(url string) string {
	return `fetch(` + strconvQuote(url) + `).then(r => r.text().then(b => r.status + "\n" + b))`
}

func strconvQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "\\'") + "'" }

func TestPagesInChromium(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	if err := chconn.Migrate(context.Background(), conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	period := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, now)
	elapsed := int(now.Sub(period.Start).Hours()/24) + 1
	// Daily ai_generation rows for every day of the period so far: 1.5 a
	// day for tenant-a (FREE), 7 for acme (PRO in the plans file).
	// tenant-a's user id is one a spreadsheet would run as a formula.
	const formulaUser = `=HYPERLINK("https://x.invalid","u1")`
	b, err := conn.PrepareBatch(context.Background(), `INSERT INTO usage_1d (tenant_id, feature_type, subject, window_start, aggregation, value,
 events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	for d := 0; d < elapsed; d++ {
		day := period.Start.AddDate(0, 0, d)
		for tenant, v := range map[string]string{"tenant-a": "1.5", "acme": "7"} {
			if err := b.Append(tenant, "ai_generation", map[string]string{"tenant-a": formulaUser, "acme": "u1"}[tenant], day, "sum", decimal.RequireFromString(v), uint64(1), int64(0), int32(0), int64(d), day, uint64(2)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	pb, err := conn.PrepareBatch(context.Background(), `INSERT INTO usage_period (tenant_id, feature_type, subject, period_id, period_start,
 period_end, plan, aggregation, value, events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	if err := pb.Append("tenant-a", "ai_generation", formulaUser, period.ID, period.Start, period.End, "FREE", "sum", decimal.NewFromInt(45),
		uint64(45), int64(0), int32(0), int64(1), now, uint64(2)); err != nil {
		t.Fatal(err)
	}
	if err := pb.Append("acme", "ai_generation", "u1", period.ID, period.Start, period.End, "PRO", "sum", decimal.NewFromInt(int64(7*elapsed)),
		uint64(elapsed), int64(0), int32(0), int64(1), now, uint64(2)); err != nil {
		t.Fatal(err)
	}
	if err := pb.Send(); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvUsage(t, p, usageread.NewReader(conn, p))
	e.publishState("tenant-a", "ai_generation", 45) // 90 % of FREE's 50

	ctx := browser(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		must(err)
		return v
	}
	attr := func(sel, name string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(sel), name))
		must(err)
		return v.Value
	}
	count := func(sel string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll(`+strconvQuote(sel)+`).length`))
		must(err)
		return n
	}
	fetch := func(u string) (string, string) {
		t.Helper()
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](fetchJS(u), chromedp.EvalAwaitPromise))
		must(err)
		status, body, _ := strings.Cut(got, "\n")
		return status, body
	}
	signIn := func(key string) {
		t.Helper()
		must(chromedp.Do(ctx,
			chromedp.Navigate(e.srv.URL+"/login"),
			chromedp.WaitVisible(chromedp.ID("key")),
			chromedp.SendKeys(chromedp.ID("key"), key),
			chromedp.Click(chromedp.ID("go")),
			chromedp.Sleep(300*time.Millisecond)))
	}
	// Without a cookie the page sends the browser to the sign-in form.
	must(chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/usage/tenant-a"), chromedp.WaitVisible(chromedp.ID("key"))))
	signIn(keyA)
	must(chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("meter-ai_generation"))))
	screenshot(t, ctx, "free-tenant-90pct")
	color, banner := attr("#meter-ai_generation", "data-color"), text("#banner")
	usage, limit := text("#meter-ai_generation .usage"), text("#meter-ai_generation .limit")
	if color != "red" || !strings.Contains(banner, "90 %") || !strings.Contains(banner, "Upgrade") || usage != "45" || limit != "50" {
		t.Fatalf("FREE at 90 %%: color %q banner %q usage %q limit %q", color, banner, usage, limit)
	}
	if n := count("#meter-ai_generation circle.pt"); n != elapsed {
		t.Fatalf("chart has %d points, want one per day of the period so far (%d)", n, elapsed)
	}
	// The CSV link, fetched by the page with its cookie, parses and equals
	// a direct ClickHouse query.
	status, body := fetch(attr("#csv-daily", "href"))
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if status != "200" || err != nil {
		t.Fatalf("csv: %s %v\n%s", status, err, body)
	}
	if want := direct(t, conn, "tenant-a", period.Start, period.End); len(want) != elapsed+1 || !slices.EqualFunc(rows, want, slices.Equal) {
		t.Fatalf("csv\n got %v\nwant %v", rows, want)
	}
	// The users CSV: the formula-like user id behind a single quote.
	status, body = fetch(attr("#csv-users", "href"))
	if rows, err = csv.NewReader(strings.NewReader(body)).ReadAll(); status != "200" || err != nil {
		t.Fatalf("users csv: %s %v\n%s", status, err, body)
	}
	if want := directUsers(t, conn, "usage_period", "tenant-a", period.Start, period.End); len(want) != 2 || want[1][3] != "'"+formulaUser ||
		!slices.EqualFunc(rows, want, slices.Equal) {
		t.Fatalf("users csv\n got %q\nwant %q", rows, want)
	}
	// tenant-a's key reads neither another tenant's page, nor its API, nor its CSV.
	for _, u := range []string{"/usage/tenant-b", "/v1/usage/tenant-b", "/v1/usage/tenant-b?format=csv", "/usage/acme"} {
		if status, body := fetch(u); status != "403" || strings.Contains(body, "ai_generation") {
			t.Fatalf("tenant-a's cookie on %s: %s %s", u, status, body)
		}
	}
	// The admin sees the PRO tenant: unlimited is infinity.
	signIn(keyAdmin)
	must(chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/usage/acme"), chromedp.WaitVisible(chromedp.ID("meter-ai_generation"))))
	screenshot(t, ctx, "pro-tenant-unlimited")
	if inf, c, n := text("#meter-ai_generation .limit"), attr("#meter-ai_generation", "data-color"), count("#meter-ai_generation circle.pt"); inf != "∞" || c != "ok" || n != elapsed {
		t.Fatalf("PRO: limit %q color %q points %d", inf, c, n)
	}
	// No quota state for acme yet: the stored period total (usage_period,
	// seeded below by the day rows' sum) is shown beside the cache's 0.
	if got := text("#meter-ai_generation .stored"); got != fmt.Sprint(7*elapsed) {
		t.Fatalf("PRO stored total %q, want %d", got, 7*elapsed)
	}
	// The admin page lists tenant-a at 90 % of its limit.
	must(chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/admin"), chromedp.WaitVisible(chromedp.ID("tenants"))))
	screenshot(t, ctx, "admin")
	if pct := text(`#tenants tr[data-tenant="tenant-a"] .pct`); pct != "90" {
		t.Fatalf("admin page: tenant-a at %q %%, want 90", pct)
	}
	// The admin grants tenant-a 10 more from the page's form (a cookie
	// post from our origin); its bar then shows 45 of 60, amber (75 %).
	must(chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("gtenant"), "tenant-a"), chromedp.SendKeys(chromedp.ID("gamount"), "10"),
		chromedp.Click(chromedp.ID("ggo")), chromedp.WaitVisible(chromedp.ID("msg"))))
	screenshot(t, ctx, "admin-after-grant")
	if msg := text("#msg"); !strings.Contains(msg, "tenant-a gets 10 more ai_generation in "+period.ID) || strings.Contains(msg, "not read") {
		t.Fatalf("grant message %q", msg)
	}
	must(chromedp.Do(ctx, chromedp.Navigate(e.srv.URL+"/usage/tenant-a"), chromedp.WaitVisible(chromedp.ID("meter-ai_generation"))))
	if l, c := text("#meter-ai_generation .limit"), attr("#meter-ai_generation", "data-color"); l != "60" || c != "amber" {
		t.Fatalf("after the grant: limit %q color %q, want 60 amber", l, c)
	}
}
