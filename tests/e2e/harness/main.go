// nodeguard-e2e runs the scenarios of tests/e2e/scenarios against a real control plane
// (tests/e2e/up --nodeguard): every write is made by the writer it stands for, with
// that writer's credentials, and answered by the real kube-apiserver, its
// authorizers, NodeRestriction and its ValidatingAdmissionWebhook plugin calling
// nodeguard through the Service deploy/ ships.
//
//	tests/e2e/up --nodeguard -- nodeguard-e2e --scenarios DIR [--only SUBSTRING] \
//	    -- ip netns exec "$NODEGUARD_NETNS" nodeguard serve ...
//
// One line per step, `PASS|FAIL scenario / step`, then `N passed, M failed`.
// Exit 0 if all passed, 1 if any failed, 2 on a setup error.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// forbiddenLines are the lines of nodeguard's log that report an API request the
// authorizer refused it.
func forbiddenLines(log string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(strings.ToLower(line), "forbidden") {
			out = append(out, line)
		}
	}
	return out
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("nodeguard-e2e", flag.ContinueOnError)
	clusterDir := fs.String("cluster-dir", os.Getenv("CLUSTER_DIR"), "the directory of tests/e2e/up (admin.conf, pki/)")
	apiserverLog := fs.String("apiserver-log", os.Getenv("CLUSTER_APISERVER_LOG"), "kube-apiserver's log, read for webhook calls that failed open")
	admin := fs.String("nodeguard-admin", "", "nodeguard's admin base URL (default http://$NODEGUARD_ADDRESS:8080)")
	kubectl := fs.String("kubectl", filepath.Join(os.Getenv("CLUSTER_BIN"), "kubectl"), "the kubectl of the cluster's release, for `kubectl describe node`")
	binary := fs.String("nodeguard", os.Getenv("NODEGUARD"), "the nodeguard binary, for `nodeguard forget`")
	ngLog := fs.String("nodeguard-log", "", "file for nodeguard's stdout and stderr (default nodeguard.log in the cluster's logs)")
	scenarios := fs.String("scenarios", "", "directory of scenario *.yaml files, run in name order")
	only := fs.String("only", "", "run only scenarios whose name or file name contains this")
	grace := fs.Duration("grace", 100*time.Millisecond, "pause after each write, for nodeguard's watches to see it")
	readyTimeout := fs.Duration("ready-timeout", 30*time.Second, "how long to wait for nodeguard's /readyz")
	fakecri := fs.String("fakecri", "", "the fakecri binary: with it, the scenarios with real kubelets run after the others")
	kubeletsOnly := fs.Bool("kubelets-only", false, "run only the scenarios with real kubelets")
	long := fs.Bool("long", false, "also run the kubelet scenarios that wait for minutes (not in CI)")
	soak := fs.Duration("soak", 0, "instead of the scenarios, run the soak this long (needs --fakecri)")
	soakMachines := fs.Int("soak-machines", 6, "machines in the soak")
	verbose := fs.Bool("v", false, "print the details of passing steps too")
	podImages := fs.String("pods", "", "instead of the scenarios, install nodeguard from deploy/ as pods, from the image archives in this directory (.ci/build-image), and run the pod scenarios (needs --fakecri)")
	repo := fs.String("repo", "", "the repository, whose deploy/ the pod scenarios install (default: three levels above --scenarios)")
	helm := fs.String("helm", "", "the helm binary, for the pod scenarios' Helm install")
	ledgerMode := fs.String("ledger", "auto", "whether nodeguard keeps a NodeIdentity ledger the reset waits for: on, off, or auto (on when the cluster serves nodeidentities.nodeguard.io)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: nodeguard-e2e [flags] -- NODEGUARD-SERVE-COMMAND...\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	argv := fs.Args()
	setupErr := func(format string, args ...interface{}) int {
		fmt.Fprintf(os.Stderr, "nodeguard-e2e: "+format+"\n", args...)
		return 2
	}
	if *podImages != "" {
		if *clusterDir == "" || *binary == "" || *fakecri == "" {
			return setupErr("--pods needs --cluster-dir, --nodeguard and --fakecri (tests/e2e/pods sets them)")
		}
		if *repo == "" {
			*repo = filepath.Join(*scenarios, "..", "..", "..")
		}
		cluster, err := NewCluster(*clusterDir, *apiserverLog, &warningLog{})
		if err != nil {
			return setupErr("the cluster in %s: %v", *clusterDir, err)
		}
		started := time.Now()
		passed, failed := RunPodScenarios(cluster, PodOptions{ClusterBin: os.Getenv("CLUSTER_BIN"), Fakecri: *fakecri,
			Images: *podImages, Dir: filepath.Join(*clusterDir, "pods"), Root: *repo, Nodeguard: *binary, Helm: *helm, Only: *only})
		fmt.Printf("%d passed, %d failed (%s)\n", passed, failed, time.Since(started).Round(time.Second))
		if failed > 0 {
			return 1
		}
		return 0
	}
	if *admin == "" && os.Getenv("NODEGUARD_ADDRESS") != "" {
		*admin = "http://" + os.Getenv("NODEGUARD_ADDRESS") + ":8080"
	}
	if *ngLog == "" && *clusterDir != "" {
		*ngLog = filepath.Join(*clusterDir, "logs", "nodeguard.log")
	}
	switch {
	case *clusterDir == "" || *apiserverLog == "" || *admin == "" || *binary == "" || *scenarios == "":
		fs.Usage()
		return setupErr("--cluster-dir, --apiserver-log, --nodeguard-admin, --nodeguard and --scenarios are required (tests/e2e/up --nodeguard sets the environment they default to)")
	case len(argv) == 0:
		fs.Usage()
		return setupErr("the nodeguard serve command line is required after --")
	case *ledgerMode != "auto" && *ledgerMode != "on" && *ledgerMode != "off":
		return setupErr("--ledger %q is not auto, on or off", *ledgerMode)
	}

	scs, err := LoadScenarios(*scenarios, *only)
	if err != nil {
		return setupErr("%v", err)
	}
	if *kubeletsOnly || *soak > 0 {
		scs = nil
	}
	if len(scs) == 0 && *fakecri == "" {
		return setupErr("no scenario in %s matches", *scenarios)
	}
	hlog, err := os.OpenFile(filepath.Join(filepath.Dir(*ngLog), "nodeguard-e2e.log"), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return setupErr("%v", err)
	}
	defer hlog.Close()
	logger := log.New(hlog, "", log.LstdFlags|log.Lmicroseconds)

	warnings := &warningLog{}
	cluster, err := NewCluster(*clusterDir, *apiserverLog, warnings)
	if err != nil {
		return setupErr("the cluster in %s: %v", *clusterDir, err)
	}
	ng, err := NewNodeguard(argv, *binary, *admin, *ngLog)
	if err != nil {
		return setupErr("%v", err)
	}
	defer ng.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "nodeguard-e2e: %v: stopping nodeguard\n", s)
		ng.Close()
		os.Exit(2)
	}()
	if err := ng.Start(*readyTimeout); err != nil {
		fmt.Fprintln(os.Stderr, indent(ng.LogSince(0, 8000), "  | "))
		return setupErr("%v", err)
	}

	r := &Runner{cluster: cluster, ng: ng, keys: NewKeys(), clock: &clock{}, warnings: warnings,
		grace: *grace, readyWait: *readyTimeout, kubectl: *kubectl}
	if r.configFile = os.Getenv("NODEGUARD_CONFIG"); r.configFile != "" {
		shipped, err := os.ReadFile(r.configFile)
		if err != nil {
			return setupErr("reading nodeguard's configuration: %v", err)
		}
		r.shippedConfig = string(shipped)
		defer func() { _ = os.WriteFile(r.configFile, shipped, 0o644) }()
	}
	switch *ledgerMode {
	case "on":
		r.ledger = true
	case "off":
		r.noLedger = "the ledger is off (--ledger off)"
	default:
		cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cluster.adminDyn.Resource(nodeIdentitiesGVR).List(cx, metav1.ListOptions{Limit: 1})
		cancel()
		switch {
		case err == nil:
			r.ledger = true
		case apierrors.IsNotFound(err):
			r.noLedger = "the cluster does not serve nodeidentities.nodeguard.io (--ledger auto)"
		default:
			return setupErr("listing nodeidentities: %v", err)
		}
	}
	if !r.ledger {
		fmt.Fprintf(os.Stderr, "nodeguard-e2e: note: %s; the reset does not wait for NodeIdentities, and ledger steps fail\n", r.noLedger)
	}
	logger.Printf("ledger: %v", r.ledger)

	passed, failed := 0, 0
	started := time.Now()
	for _, sc := range scs {
		logger.Printf("===== scenario %s (%s)", sc.Name, sc.file)
		logOffset := ng.LogSize()
		if err := r.Reset(sc); err != nil {
			for i := range sc.Steps {
				fmt.Printf("FAIL %s / %s\n", sc.Name, sc.Steps[i].title())
				failed++
			}
			fmt.Println(indent("setup: "+err.Error(), "    "))
			if l := ng.LogSince(logOffset, 4000); l != "" {
				fmt.Println("    nodeguard log:")
				fmt.Println(indent(l, "    | "))
			}
			continue
		}
		for i := range sc.Steps {
			st := &sc.Steps[i]
			logger.Printf("----- step %s", st.title())
			logOffset := ng.LogSize()
			wasRunning := ng.Running()
			res := r.Run(st)
			if wasRunning && st.Nodeguard != "stop" && !ng.Running() {
				res.Pass = false
				res.Details = append(res.Details, fmt.Sprintf("nodeguard exited during this step: %v", ng.exitErr))
			}
			if refused := forbiddenLines(ng.LogSince(logOffset, 1<<20)); len(refused) > 0 {
				res.Pass = false
				res.Details = append(res.Details, "the API server refused nodeguard a request (are deploy/'s RBAC grants short?):\n"+strings.Join(refused, "\n"))
			}
			verdict := "PASS"
			if res.Pass {
				passed++
			} else {
				verdict = "FAIL"
				failed++
			}
			for _, d := range append(res.Details, res.Info...) {
				logger.Print(indent(d, "    "))
			}
			fmt.Printf("%s %s / %s\n", verdict, sc.Name, st.title())
			if !res.Pass {
				for _, d := range res.Details {
					fmt.Println(indent(d, "    "))
				}
			}
			if !res.Pass && r.ledger {
				res.Info = append(res.Info, r.ledgerState()...)
			}
			if !res.Pass || *verbose {
				for _, d := range res.Info {
					fmt.Println(indent(d, "    "))
				}
			}
			if !res.Pass {
				if l := ng.LogSince(logOffset, 4000); l != "" {
					fmt.Println("    nodeguard log:")
					fmt.Println(indent(l, "    | "))
				}
			}
		}
	}
	if *soak > 0 {
		ok := r.RunSoak(os.Getenv("CLUSTER_BIN"), *fakecri, filepath.Join(*clusterDir, "soak"), *soakMachines, *soak)
		logger.Printf("soak done in %s", time.Since(started))
		if !ok {
			return 1
		}
		return 0
	}
	if *fakecri != "" {
		p, f := r.RunKubeletScenarios(os.Getenv("CLUSTER_BIN"), *fakecri, filepath.Join(*clusterDir, "machines"), *only, *long)
		passed += p
		failed += f
	}
	logger.Printf("done in %s", time.Since(started))
	if err := ng.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "nodeguard-e2e: %v\n", err)
	}
	if failed > 0 {
		fmt.Printf("logs: nodeguard %s, harness %s, control plane %s\n", *ngLog, hlog.Name(), filepath.Dir(*apiserverLog))
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}
