package svckit

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// LoadConfig fills cfg, a pointer to a service's config struct holding its
// defaults, from (lowest to highest precedence) those defaults, the YAML
// file named by the flag "config" (when set), USAGE_<SECTION>_<KEY>
// environment variables, and the flags named in flagKeys (flag -> config
// key) that were set on the command line. A key the struct does not have
// is an error naming it, so a typo never silently falls back to a default.
// It returns the effective settings, secrets redacted, for a `config`
// command.
func LoadConfig(flags *pflag.FlagSet, flagKeys map[string]string, cfg any) (map[string]any, error) {
	v := viper.New()
	// Every key gets a default, which is also what makes each one
	// settable from the environment.
	setDefaults(v, "", derefStruct(cfg))
	v.SetEnvPrefix("USAGE")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if f := flags.Lookup("config"); f != nil && f.Value.String() != "" {
		v.SetConfigFile(f.Value.String())
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("read config file %s: %w", f.Value.String(), err)
		}
	}
	for name, key := range flagKeys {
		f := flags.Lookup(name)
		if f == nil {
			return nil, fmt.Errorf("bind flag --%s: no such flag", name)
		}
		if !f.Changed {
			continue // an unset flag must not hide the file or the environment
		}
		if err := v.BindPFlag(key, f); err != nil {
			return nil, fmt.Errorf("bind flag --%s: %w", name, err)
		}
	}
	if err := v.UnmarshalExact(cfg, func(dc *mapstructure.DecoderConfig) { dc.ErrorUnset = false }); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return printable(v.AllSettings()), nil
}

// NewLogger builds a service's logger: level debug, info, warn or error;
// format json (the default) or console.
func NewLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	var zc zap.Config
	switch format {
	case "", "json":
		zc = zap.NewProductionConfig()
	case "console":
		zc = zap.NewDevelopmentConfig()
	default:
		return nil, fmt.Errorf("log.format: %q is not json or console", format)
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.DisableStacktrace = true
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return zc.Build()
}

// derefStruct returns the struct cfg points to (setDefaults walks values).
func derefStruct(cfg any) any {
	rv := reflect.ValueOf(cfg)
	for rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	return rv.Interface()
}

// setDefaults registers every mapstructure key of cfg (a struct, nested
// structs become dotted keys) with its value as the default. Registering
// every key is also what makes each one settable from the environment.
func setDefaults(v *viper.Viper, prefix string, cfg any) {
	rv := reflect.ValueOf(cfg)
	for i := range rv.NumField() {
		f := rv.Type().Field(i)
		name := f.Tag.Get("mapstructure")
		if name == "" {
			continue
		}
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}) {
			setDefaults(v, prefix+name+".", rv.Field(i).Interface())
			continue
		}
		v.SetDefault(prefix+name, rv.Field(i).Interface())
	}
}

// printable prepares viper settings for a `config` command: durations as
// text, secrets (password, secret, *_key, *_secret) redacted.
func printable(m map[string]any) map[string]any {
	for k, val := range m {
		switch x := val.(type) {
		case map[string]any:
			m[k] = printable(x)
		case time.Duration:
			m[k] = x.String()
		}
		if secretKey(k) && m[k] != "" {
			m[k] = "<redacted>"
		}
	}
	return m
}

func secretKey(k string) bool {
	return k == "password" || k == "secret" || strings.HasSuffix(k, "_key") || strings.HasSuffix(k, "_secret") ||
		strings.HasSuffix(k, "_password")
}
