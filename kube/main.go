// Command kube is one binary holding the Kubernetes components the pytest-dataplane lab runs,
// like the old hyperkube: it only chooses a component by the name it is called by (a symlink
// named kube-apiserver, kubectl, ...) or by its first argument, and hands over to that
// component's own entry point. One component runs per process.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // CronJob time zones in the apiserver and controller-manager

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics on /metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the build-info metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's exec/oidc credential plugins
)

// Each entry runs one component with os.Args already set to that component's own argv
// (argv[0] is the component name, as if it were its own binary) and returns the exit code.
var components = map[string]func() int{
	"etcd": func() int {
		etcdmain.Main(os.Args)
		return 0
	},
	"kube-apiserver": func() int {
		return cli.Run(apiserver.NewAPIServerCommand())
	},
	"kube-controller-manager": func() int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int {
		return cli.Run(scheduler.NewSchedulerCommand())
	},
	"kube-proxy": func() int {
		return cli.Run(proxy.NewProxyCommand())
	},
	"kubectl": func() int {
		// As kubectl's own main: klog's verbosity must be known before the command is built.
		_, _ = logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args))
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

func names() string {
	list := make([]string, 0, len(components))
	for name := range components {
		list = append(list, name)
	}
	sort.Strings(list)
	return strings.Join(list, ", ")
}

func main() {
	self := filepath.Base(os.Args[0])
	run, ok := components[self]
	if !ok && len(os.Args) > 1 {
		// Cobra and etcd read os.Args; dropping our own name makes the component's argv
		// exactly what its own binary would see.
		if run, ok = components[os.Args[1]]; ok {
			os.Args = os.Args[1:]
		}
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [ARGS...] (or call it by a link named COMPONENT)\ncomponents: %s\n", self, names())
		os.Exit(2)
	}
	os.Exit(run())
}
