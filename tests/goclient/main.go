// Command goclient drives a member (ferrokv or the reference etcd) with the official Go etcd
// client, go.etcd.io/etcd/client/v3, the way kube-apiserver's storage layer
// (k8s.io/apiserver/pkg/storage/etcd3) does, and reports one JSON line per scenario:
//
//	{"scenario":"create","ok":true,"error":"","observations":{...}}
//
// It exits 1 when any scenario failed and 2 on bad usage or when no client could be built.
// The Rust test tests/tests/go_client.rs builds and runs it against both backends; a scenario
// that fails against etcd is a wrong scenario, one that fails only against ferrokv is a bug.
//
// This module is test tooling only: product code stays Rust.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// result is one output line.
type result struct {
	Scenario     string         `json:"scenario"`
	OK           bool           `json:"ok"`
	Error        string         `json:"error"`
	Observations map[string]any `json:"observations"`
}

// env is what every scenario gets: the client, a key prefix unique to this run (so reruns
// against one member never collide) and the flags.
type env struct {
	cli        *clientv3.Client
	endpoint   string
	prefix     string
	minVersion string
	obs        map[string]any
}

// observe records a value in the scenario's observations (printed even on success, so a
// reader can compare the two backends side by side).
func (e *env) observe(k string, v any) { e.obs[k] = v }

type scenario struct {
	name string
	run  func(ctx context.Context, e *env) error
}

// The order matters: compaction scenarios run last so that the earlier ones can still read
// the revisions they wrote.
var scenarios = []scenario{
	{"status", scenarioStatus},
	{"member_list", scenarioMemberList},
	{"create", scenarioCreate},
	{"get", scenarioGet},
	{"guaranteed_update", scenarioGuaranteedUpdate},
	{"delete_precondition", scenarioDeletePrecondition},
	{"paged_list", scenarioPagedList},
	{"count_only", scenarioCountOnly},
	{"keys_only", scenarioKeysOnly},
	{"watch_progress", scenarioWatchProgress},
	{"watch_progress_load", scenarioWatchProgressLoad},
	{"watch_progress_multi", scenarioWatchProgressMulti},
	{"lease_shared_expire", scenarioLeaseExpire},
	{"lease_shared_revoke", scenarioLeaseRevoke},
	{"errors", scenarioErrors},
	{"compaction_kube", scenarioCompactionKube},
	{"watch_compacted", scenarioWatchCompacted},
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated client URLs (required)")
	cacert := flag.String("cacert", "", "CA certificate file (TLS)")
	cert := flag.String("cert", "", "client certificate file (TLS)")
	key := flag.String("key", "", "client key file (TLS)")
	only := flag.String("scenarios", "", "comma-separated scenario names to run (default: all)")
	minVersion := flag.String("min-server-version", "3.5.13",
		"Status.Version must be at least this (kube-apiserver enables progress requests from 3.5.13)")
	timeout := flag.Duration("scenario-timeout", 60*time.Second, "time limit per scenario")
	list := flag.Bool("list", false, "print the scenario names and exit")
	flag.Parse()

	if *list {
		for _, s := range scenarios {
			fmt.Println(s.name)
		}
		return
	}
	if *endpoints == "" {
		fmt.Fprintln(os.Stderr, "goclient: --endpoints is required")
		os.Exit(2)
	}
	eps := strings.Split(*endpoints, ",")

	// Options as kube-apiserver sets them (storagebackend/factory/etcd3.go).
	cfg := clientv3.Config{
		Endpoints:            eps,
		DialTimeout:          10 * time.Second,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Logger:               zap.NewNop(),
	}
	if *cacert != "" || *cert != "" {
		info := transport.TLSInfo{TrustedCAFile: *cacert, CertFile: *cert, KeyFile: *key}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			fmt.Fprintf(os.Stderr, "goclient: TLS config: %v\n", err)
			os.Exit(2)
		}
		cfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "goclient: client: %v\n", err)
		os.Exit(2)
	}
	defer cli.Close()

	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	for n := range want {
		if !known(n) {
			fmt.Fprintf(os.Stderr, "goclient: unknown scenario %q\n", n)
			os.Exit(2)
		}
	}

	prefix := fmt.Sprintf("/registry/goclient-%d", time.Now().UnixNano())
	failed := 0
	out := json.NewEncoder(os.Stdout)
	for _, s := range scenarios {
		if len(want) > 0 && !want[s.name] {
			continue
		}
		e := &env{
			cli:        cli,
			endpoint:   eps[0],
			prefix:     prefix + "/" + s.name,
			minVersion: *minVersion,
			obs:        map[string]any{},
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		err := runGuarded(ctx, s, e)
		cancel()
		r := result{Scenario: s.name, OK: err == nil, Observations: e.obs}
		if err != nil {
			r.Error = err.Error()
			failed++
		}
		if encErr := out.Encode(r); encErr != nil {
			fmt.Fprintf(os.Stderr, "goclient: encode: %v\n", encErr)
			os.Exit(2)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

func known(name string) bool {
	for _, s := range scenarios {
		if s.name == name {
			return true
		}
	}
	return false
}

// runGuarded turns a panic inside a scenario (e.g. an index into an unexpectedly short
// response) into that scenario's failure instead of losing every later line.
func runGuarded(ctx context.Context, s scenario, e *env) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return s.run(ctx, e)
}
