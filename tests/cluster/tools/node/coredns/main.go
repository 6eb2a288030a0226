// CoreDNS with only the plugins the real test node needs: the cluster's
// Service and Pod names (kubernetes), readiness (ready) and error logging.
// The upstream binary links every plugin (cloud DNS providers included);
// this build stays small and compiles in a fraction of the time.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
