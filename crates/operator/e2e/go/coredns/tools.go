//go:build tools

// Pins CoreDNS (the version kubeadm v1.34 deploys) for the kind node image;
// scripts/build-kind-node.sh builds it with scripts/go-tools.sh.
package tools

import _ "github.com/coredns/coredns"
