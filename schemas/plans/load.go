package plans

import (
	"fmt"
	"os"
	"reflect"
	"strconv"

	"github.com/go-viper/mapstructure/v2"
	"github.com/shopspring/decimal"
	"go.yaml.in/yaml/v3"
)

// Load reads a meters-and-plans YAML file, fills defaults and validates it.
// Unknown keys are errors, so a typo never silently means "unlimited".
//
// It reads the YAML itself rather than through viper: viper lower-cases
// every key, and here keys are data (tenant ids and plan names are case
// sensitive).
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read plans file: %w", err)
	}
	c, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("plans file %s: %w", path, err)
	}
	return c, nil
}

// Parse is Load for YAML already in memory (e.g. from a Kafka message).
func Parse(raw []byte) (*Config, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	var c Config
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:      &c,
		ErrorUnused: true,
		DecodeHook:  mapstructure.ComposeDecodeHookFunc(decimalHook, mapstructure.StringToTimeDurationHookFunc()),
	})
	if err != nil {
		return nil, err
	}
	if err := dec.Decode(doc); err != nil {
		return nil, err
	}
	if err := c.Normalize(); err != nil {
		return nil, err
	}
	return &c, nil
}

// decimalHook reads limits written as YAML integers, floats or strings
// into exact decimals. Floats go through their shortest text form, so
// 0.1 stays 0.1.
func decimalHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(decimal.Decimal{}) {
		return data, nil
	}
	switch x := data.(type) {
	case int:
		return decimal.NewFromInt(int64(x)), nil
	case int64:
		return decimal.NewFromInt(x), nil
	case float64:
		return decimal.NewFromString(strconv.FormatFloat(x, 'f', -1, 64))
	case string:
		d, err := decimal.NewFromString(x)
		if err != nil {
			return nil, fmt.Errorf("%q is not a decimal number", x)
		}
		return d, nil
	}
	return data, nil
}
