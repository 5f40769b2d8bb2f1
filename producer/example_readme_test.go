package producer_test

// The README's "Publishing events" snippet is the text between the readme
// markers below, quoted verbatim (firsthour's TestReadmeGoSnippet fails if
// the two differ, and builds it in a module outside the repository), so the
// snippet compiles as shown, imports and all.

// readme:begin
import (
	"context"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
)

func publish(ctx context.Context) error {
	p, err := producer.New([]string{"127.0.0.1:19092"}) // lz4, acks=all, Murmur2 on tenant_id
	if err != nil {
		return err
	}
	defer p.Close() // flushes everything queued

	ev := producer.NewEvent("acme", "ai_generation", decimal.NewFromInt(1)) // id (UUIDv7) and timestamp fixed here
	ev.UserID, ev.Metadata = "user-42", map[string]string{"model": "gpt-x", "tokens": "1532"}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.Publish(ctx, ev) // exact decimals, never float64; retry with this same ev (same id: counted once)
}

// readme:end

// Example_readme is compiled, not run (it would publish to the default
// topic); firsthour's tests run the README's commands.
func Example_readme() {
	_ = publish(context.Background())
}
