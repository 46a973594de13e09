// Command etcdref is the reference etcd server, go.etcd.io/etcd/server/v3 at the version
// pinned in go.mod (3.6.x), built from Go modules for the Go-client control test.
//
// Why: the Debian etcd-server package is 3.4, older than the 3.5.13 from which kube-apiserver
// sends watch progress requests (earlier servers may answer them ahead of queued events,
// etcd-io/etcd#15220). tests/tests/go_client.rs runs every scenario, with kube's version
// threshold, against this build too, so the scenarios that 3.4 cannot judge have a control.
// Test tooling only: it runs etcd's own main, unchanged.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
