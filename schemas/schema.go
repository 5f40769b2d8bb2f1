package schemas

import _ "embed"

//go:embed usage_event.schema.json
var usageEventSchema string

// UsageEventJSONSchema returns usage_event.schema.json (draft 2020-12), the
// contract for producers in other languages.
func UsageEventJSONSchema() []byte { return []byte(usageEventSchema) }
