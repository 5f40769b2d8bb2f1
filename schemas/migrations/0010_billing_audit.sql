-- Every Stripe write billing-sync plans or makes, and every difference it
-- observes or cannot fix: "what did we bill and why" is one query. Append
-- only: an intent is written as `pending` before its Stripe call (a
-- write-ahead log: a pass killed half-way re-sends exactly these, with the
-- same idempotency key), then once more with its result. An intent is
-- (tenant_id, meter, window_start, seq); its newest row (at_ns) is its state.
-- ours / stripe are integer billing units (after the meter's scale):
-- stripe is what Stripe holds for the window once the action applied
-- (or what reconcile observed), delta what the action adds.
CREATE TABLE IF NOT EXISTS billing_audit
(
    tenant_id       String,
    meter           String,
    mode            String,
    window_start    DateTime('UTC'),
    window_end      DateTime('UTC'),
    customer        String,
    target          String,
    seq             UInt32,
    action          String,
    quantity        Decimal(38, 9),
    ours            Int64,
    stripe          Int64,
    delta           Int64,
    identifier      String,
    idempotency_key String,
    result          String,
    error           String,
    pass_id         String,
    at              DateTime('UTC'),
    at_ns           Int64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, meter, window_start, seq, at_ns)
