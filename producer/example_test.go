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

	events := []schemas.UsageEvent{{
		TenantID:    "acme",
		UserID:      "user-42",
		FeatureType: schemas.MeterAIGeneration,
		Quantity:    decimal.NewFromInt(1),
		Metadata:    map[string]string{"model": "gpt-4o-mini", "tokens": "1532"},
	}, {
		TenantID:    "acme",
		FeatureType: schemas.MeterStorage,
		Quantity:    decimal.RequireFromString("2.125"), // GB, exact
		Metadata:    map[string]string{"bucket": "exports"},
	}}
	// Sync mode: Publish returns once the broker acknowledged every event.
	err = p.Publish(context.Background(), events...)
	var invalid *schemas.ValidationError
	switch {
	case errors.As(err, &invalid):
		log.Printf("refused, nothing published: %s", invalid.Tag()) // e.g. invalid_quantity
	case err != nil:
		// Publishing the same events again is safe: they keep their ids.
		log.Printf("not acknowledged: %v", err)
	default:
		log.Printf("published %s (%s)", events[0].ID, events[0].Timestamp) // filled by Publish
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
