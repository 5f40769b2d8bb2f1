package svckit

import (
	"fmt"
	"reflect"
	"strings"

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
	SetDefaults(v, "", derefStruct(cfg))
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
	return Printable(v.AllSettings()), nil
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

// derefStruct returns the struct cfg points to (SetDefaults walks values).
func derefStruct(cfg any) any {
	rv := reflect.ValueOf(cfg)
	for rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	return rv.Interface()
}
