package schemas

// CheckTenantID returns nil when s is a tenant_id the contract accepts, or
// a *ValidationError naming the field and the rule (the consumer's rules:
// 1-128 characters of A-Z a-z 0-9 . _ : @ -). Quota checks use it before
// counting, so that usage the pipeline would refuse is never allowed.
func CheckTenantID(s string) error { return checkStateTenant(s) }

// CheckFeatureType returns nil when s is a feature_type (meter name) the
// contract accepts, or a *ValidationError naming the field and the rule.
func CheckFeatureType(s string) error { return checkStateMeter(s) }
