// Package chconn opens the ClickHouse connection every service uses: native
// protocol only (ClickHouse 18.16 rejects clickhouse-go's HTTP protocol),
// the database created when missing, and the embedded migrations applied on
// request.
package chconn

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas/migrations"
)

// Config locates the ClickHouse server.
type Config struct {
	Addr        []string      `mapstructure:"addr"`
	Database    string        `mapstructure:"database"`
	Username    string        `mapstructure:"username"`
	Password    string        `mapstructure:"password"`
	DialTimeout time.Duration `mapstructure:"dial_timeout"`
	ReadTimeout time.Duration `mapstructure:"read_timeout"`
}

// DefaultConfig points at the server scripts/clickhouse.sh starts.
func DefaultConfig() Config {
	return Config{
		Addr:        []string{"127.0.0.1:19000"},
		Database:    "usage",
		Username:    "default",
		DialTimeout: 5 * time.Second,
		ReadTimeout: 60 * time.Second,
	}
}

// Open connects, creating the database when it is missing.
func Open(ctx context.Context, cfg Config) (driver.Conn, error) {
	if len(cfg.Addr) == 0 {
		return nil, errors.New("clickhouse.addr: at least one address is required")
	}
	createDB, err := migrations.CreateDatabaseSQL(cfg.Database)
	if err != nil {
		return nil, fmt.Errorf("clickhouse.database: %w", err)
	}
	// The database must exist before a connection can select it.
	admin, err := open(ctx, cfg, "default")
	if err != nil {
		return nil, err
	}
	err = admin.Exec(ctx, createDB)
	_ = admin.Close()
	if err != nil {
		return nil, fmt.Errorf("create database %s: %w", cfg.Database, err)
	}
	return open(ctx, cfg, cfg.Database)
}

func open(ctx context.Context, cfg Config, db string) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        cfg.Addr,
		Auth:        clickhouse.Auth{Database: db, Username: cfg.Username, Password: cfg.Password},
		DialTimeout: cfg.DialTimeout,
		ReadTimeout: cfg.ReadTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %v: %w", cfg.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connect to clickhouse %v: %w", cfg.Addr, err)
	}
	return conn, nil
}

// Migrate applies the embedded migrations that are not applied yet.
func Migrate(ctx context.Context, conn driver.Conn, log *zap.Logger) error {
	ran, err := migrations.Apply(ctx, conn)
	if err != nil {
		return err
	}
	for _, v := range ran {
		log.Info("applied migration", zap.Uint32("version", v))
	}
	return nil
}
