// Command cluster is one binary holding the upstream Kubernetes control plane that AutoCrane's
// tests run against: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl,
// built from the Go module proxy at the version pinned in go.mod (v1.37.2, matching k8s-openapi's
// v1_37). It dispatches on its first argument (or on the name it was invoked as), and each
// component runs in a process of its own: the upstream commands install process-wide signal
// handlers and the scheduler exits the process when it loses its lease, so they cannot share one.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as the upstream mains

	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const usage = `usage: cluster COMPONENT [FLAGS...]

Upstream Kubernetes control-plane components, one per process:
  etcd                      etcd server (go.etcd.io/etcd/server/v3)
  kube-apiserver            the Kubernetes API server
  kube-controller-manager   the controller manager
  kube-scheduler            the scheduler
  kubectl                   kubectl of the same version
  up                        PKI + all four servers on loopback, a kubeconfig, stop on SIGTERM
                            (see "cluster up --help")

The binary may also be invoked through a link named after a component.
`

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if !isComponent(name) {
		if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
			fmt.Fprint(os.Stderr, usage)
			if len(os.Args) < 2 {
				os.Exit(2)
			}
			os.Exit(0)
		}
		name = os.Args[1]
		args = append([]string{name}, os.Args[2:]...)
	}
	os.Args = args
	switch name {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubectl":
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "up":
		os.Exit(up(os.Args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "cluster: unknown component %q\n\n%s", name, usage)
		os.Exit(2)
	}
}

func isComponent(name string) bool {
	switch name {
	case "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl":
		return true
	}
	return false
}
