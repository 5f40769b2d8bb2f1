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
	"github.com/usagemeter/usagemeter/svckit"
)

// Config locates the ClickHouse server.
type Config struct {
	Addr        []string      `mapstructure:"addr"`
	Database    string        `mapstructure:"database"`
	Username    string        `mapstructure:"username"`
	Password    string        `mapstructure:"password"`
	DialTimeout time.Duration `mapstructure:"dial_timeout"`
	ReadTimeout time.Duration `mapstructure:"read_timeout"`
	// Cluster selects the replicated schema: the remote_servers name of a
	// ClickHouse cluster (Replicated*MergeTree local tables behind
	// Distributed tables sharded by tenant, see migrations.Variant). Empty
	// (the default) is the single-server schema. Addr then lists the
	// cluster's servers: the client uses the first that answers, and
	// migrations run on every one.
	Cluster string `mapstructure:"cluster"`
	// TLS to the server's secure native port (tcp_port_secure); the user
	// and password above authenticate either way.
	TLS svckit.TLSConfig `mapstructure:"tls"`
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
	// The database must exist before a connection can select it; on a
	// cluster, on every server (each holds local tables in it).
	for _, one := range servers(cfg) {
		admin, err := open(ctx, one, "default")
		if err != nil {
			return nil, err
		}
		err = admin.Exec(ctx, createDB)
		_ = admin.Close()
		if err != nil {
			return nil, fmt.Errorf("create database %s on %v: %w", cfg.Database, one.Addr, err)
		}
	}
	conn, err := open(ctx, cfg, cfg.Database)
	if err != nil || cfg.Cluster == "" {
		return conn, err
	}
	return clusterConn{Conn: conn, cfg: cfg}, nil
}

// clusterConn is a connection to a cluster: Migrate needs the config to
// reach every server.
type clusterConn struct {
	driver.Conn
	cfg Config
}

// servers returns cfg itself for one server, or one config per address of
// a cluster.
func servers(cfg Config) []Config {
	if cfg.Cluster == "" {
		return []Config{cfg}
	}
	out := make([]Config, len(cfg.Addr))
	for i, a := range cfg.Addr {
		out[i] = cfg
		out[i].Addr = []string{a}
	}
	return out
}

func open(ctx context.Context, cfg Config, db string) (driver.Conn, error) {
	tc, err := cfg.TLS.Config("clickhouse.tls")
	if err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        cfg.Addr,
		Auth:        clickhouse.Auth{Database: db, Username: cfg.Username, Password: cfg.Password},
		TLS:         tc,
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

// Migrate applies the embedded migrations that are not applied yet: on a
// connection Open made to a cluster, the cluster schema on every server.
func Migrate(ctx context.Context, conn driver.Conn, log *zap.Logger) error {
	cc, ok := conn.(clusterConn)
	if !ok {
		ran, err := migrations.Apply(ctx, conn)
		for _, v := range ran {
			log.Info("applied migration", zap.Uint32("version", v))
		}
		return err
	}
	v := migrations.Variant{Cluster: cc.cfg.Cluster, Database: cc.cfg.Database}
	for _, one := range servers(cc.cfg) {
		c, err := open(ctx, one, one.Database)
		if err != nil {
			return err
		}
		ran, err := migrations.ApplyVariant(ctx, c, v)
		_ = c.Close()
		for _, ver := range ran {
			log.Info("applied migration", zap.Uint32("version", ver), zap.Strings("server", one.Addr), zap.String("cluster", v.Cluster))
		}
		if err != nil {
			return fmt.Errorf("migrate %v: %w", one.Addr, err)
		}
	}
	return nil
}
