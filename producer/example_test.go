package producer_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

func ExampleNew() {
	p, err := producer.New([]string{"127.0.0.1:19092"},
		producer.WithCompression("zstd"),
		producer.WithBatching(5000, 1<<20, 10*time.Millisecond),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close() // flushes what is still queued
}

func ExamplePublisher_Publish() {
	p, err := producer.New([]string{"127.0.0.1:19092"})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	// NewEvent fixes the id (UUIDv7) and timestamp now, so every attempt
	// below sends the same event and it is counted once.
	ev := producer.NewEvent("acme", schemas.MeterAIGeneration, decimal.NewFromInt(1))
	ev.UserID = "user-42"
	ev.Metadata = map[string]string{"model": "gpt-4o-mini", "tokens": "1532"}
	for attempt := 1; attempt <= 3; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = p.Publish(ctx, ev) // sync mode: returns once the broker acknowledged
		cancel()
		var invalid *schemas.ValidationError
		switch {
		case errors.As(err, &invalid):
			log.Printf("refused, nothing published: %s", invalid.Tag()) // e.g. invalid_quantity
			return
		case err != nil:
			log.Printf("attempt %d not acknowledged, retrying with the same id: %v", attempt, err)
			continue
		}
		log.Printf("published %s", ev.ID)
		return
	}
}

func ExampleWithAsync() {
	p, err := producer.New([]string{"127.0.0.1:19092"},
		producer.WithAsync(func(err error, events []schemas.UsageEvent) {
			// Runs on the writer's goroutine: keep it short. The events keep
			// their ids, so republishing them later cannot double count.
			log.Printf("%d events not delivered: %v", len(events), err)
		}))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close() // waits for every queued event and callback

	// Async mode: Publish returns once the event is queued.
	err = p.Publish(context.Background(), schemas.UsageEvent{
		TenantID:    "acme",
		UserID:      "user-42",
		FeatureType: schemas.MeterAPICalls,
		Quantity:    decimal.NewFromInt(1),
		Metadata:    map[string]string{"endpoint": "/v1/search", "method": "GET"},
	})
	if err != nil {
		log.Print(err) // invalid, or not queued (e.g. unknown topic)
	}
}
