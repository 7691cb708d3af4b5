// Command coredns is CoreDNS built with only the plugins the local cluster's
// DNS needs (see ../coredns.md): the Service and Pod records of cluster.local
// and their reverse zones from the API server, and NXDOMAIN for everything
// else. There is deliberately no forward (nor grpc, etcd, hosts, file...)
// plugin: no name is ever resolved through the host's resolver or any
// upstream, so DNS traffic of the cluster's pods never leaves this machine.
//
// This is CoreDNS's documented way to make a custom build: import coremain, the
// server type and the chosen plugin packages, and set dnsserver.Directives
// (the order the plugins run in) before coremain.Run.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

// directives is the subsequence of the release's plugin.cfg (its generated
// core/dnsserver/zdirectives.go) for the plugins imported above, in the same
// relative order: a plugin sees the effects of every plugin listed after it.
// Re-check it against plugin.cfg when bumping the version in go.mod.
var directives = []string{
	"reload",      // re-read the Corefile when it changes (ConfigMap update)
	"bind",        // listen on given addresses only (the host-process check binds 127.0.0.1)
	"ready",       // :8181/ready once the kubernetes plugin has synced
	"health",      // :8080/health
	"errors",      // log errors
	"log",         // query log; not enabled in the Corefile, there for debugging
	"loadbalance", // shuffle A/AAAA records of headless Services
	"cache",       // answer repeated queries without a lookup
	"template",    // NXDOMAIN for every name outside the cluster's zones
	"kubernetes",  // cluster.local, in-addr.arpa, ip6.arpa from the API server
	"loop",        // fail fast if the server is ever made to query itself
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
