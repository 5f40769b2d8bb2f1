package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Keys are the API keys, stored as SHA-256 hashes ("sha256:<hex>"): a
// leaked keys file gives nobody a key. The file:
//
//	admin: ["sha256:..."]          # operators: any tenant
//	tenants:
//	  acme: ["sha256:...", ...]    # acts only for tenant acme
type Keys struct {
	byHash map[[32]byte]principal
}

type principal struct {
	tenant string // "" for an admin
	hash   [32]byte
}

type keysFile struct {
	Admin   []string            `yaml:"admin"`
	Tenants map[string][]string `yaml:"tenants"`
}

// HashKey returns the stored form of a key.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(h[:])
}

// LoadKeys reads a keys file. It is read with yaml, not viper, because
// tenant ids are case sensitive.
func LoadKeys(path string) (*Keys, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys file: %w", err)
	}
	var f keysFile
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("keys file %s: %w", path, err)
	}
	return NewKeys(f.Admin, f.Tenants)
}

// NewKeys builds Keys from hashes.
func NewKeys(admin []string, tenants map[string][]string) (*Keys, error) {
	k := &Keys{byHash: map[[32]byte]principal{}}
	add := func(where, tenant, s string) error {
		hexs, ok := strings.CutPrefix(s, "sha256:")
		b, err := hex.DecodeString(hexs)
		if !ok || err != nil || len(b) != 32 {
			return fmt.Errorf("%s: %q is not sha256:<64 hex digits> (see usage-api hash-key)", where, s)
		}
		var h [32]byte
		copy(h[:], b)
		if _, dup := k.byHash[h]; dup {
			return fmt.Errorf("%s: the same key is listed twice", where)
		}
		k.byHash[h] = principal{tenant: tenant, hash: h}
		return nil
	}
	var errs []error
	for i, s := range admin {
		errs = append(errs, add(fmt.Sprintf("admin[%d]", i), "", s))
	}
	for t, list := range tenants {
		if t == "" {
			errs = append(errs, errors.New("tenants: empty tenant id"))
		}
		for i, s := range list {
			errs = append(errs, add(fmt.Sprintf("tenants.%s[%d]", t, i), t, s))
		}
	}
	return k, errors.Join(errs...)
}

// Demo keys: api/keys.example.yaml and the README publish them.
const (
	DemoAdminKey        = "demo-admin-key"
	DemoTenantKeyPrefix = "demo-key-" // + tenant id
)

// RefusePublic fails when the keys include a published demo key: the
// admin demo key, or a tenant's "demo-key-<tenant>". Outside a demo such a
// key lets anyone who read the README act for that tenant, or any.
func (k *Keys) RefusePublic() error {
	var errs []error
	if p, ok := k.byHash[sha256.Sum256([]byte(DemoAdminKey))]; ok {
		who := "as admin"
		if p.tenant != "" {
			who = "for tenant " + p.tenant
		}
		errs = append(errs, fmt.Errorf("it lists the public demo key %q %s", DemoAdminKey, who))
	}
	var tenants []string
	for _, p := range k.byHash {
		if p.tenant != "" && p.hash == sha256.Sum256([]byte(DemoTenantKeyPrefix+p.tenant)) {
			tenants = append(tenants, p.tenant)
		}
	}
	slices.Sort(tenants)
	for _, t := range tenants {
		errs = append(errs, fmt.Errorf("it lists the public demo key %q for tenant %s", DemoTenantKeyPrefix+t, t))
	}
	return errors.Join(errs...)
}

// authenticate returns who the request's bearer key belongs to. The map is
// indexed by the key's SHA-256, which tells an attacker nothing about other
// keys; the final comparison is constant time anyway.
func (k *Keys) authenticate(r *http.Request) (principal, bool) {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return principal{}, false
	}
	return k.lookup(key)
}

// lookup returns who key belongs to.
func (k *Keys) lookup(key string) (principal, bool) {
	if key == "" {
		return principal{}, false
	}
	h := sha256.Sum256([]byte(key))
	p, found := k.byHash[h]
	if !found || subtle.ConstantTimeCompare(p.hash[:], h[:]) != 1 {
		return principal{}, false
	}
	return p, true
}

// actsFor reports whether p may act for tenant.
func (p principal) actsFor(tenant string) bool { return p.tenant == "" || p.tenant == tenant }
