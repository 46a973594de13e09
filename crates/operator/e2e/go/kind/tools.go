//go:build tools

// Pins kind for the e2e suite; scripts/build-kind.sh builds it with scripts/go-tools.sh.
package tools

import _ "sigs.k8s.io/kind"
