// nodeguard-e2e drives kube-apiserver's own ValidatingAdmissionWebhook plugin
// (k8s.io/apiserver) against a running `nodeguard serve`, and serves nodeguard the
// list/watch API of an in-memory cluster, so nodeguard runs unmodified.
//
//	nodeguard-e2e --webhook-config deploy.yaml --ca ca.crt --webhook-port PORT \
//	    --kubeconfig-out kubeconfig --nodeguard-admin http://127.0.0.1:APORT \
//	    --nodeguard-log nodeguard.log --scenarios DIR [--only SUBSTRING] \
//	    [--ledger auto|on|off] -- nodeguard serve ... --kubeconfig kubeconfig
//
// One line per step, `PASS|FAIL scenario / step`, then `N passed, M failed`.
// Exit 0 if all passed, 1 if any failed, 2 on a setup error.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// stepLog keeps what the plugin logs (klog) during a step, and everything in a file.
type stepLog struct {
	mu   sync.Mutex
	file io.Writer
	buf  bytes.Buffer
}

func (s *stepLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	return s.file.Write(p)
}

func (s *stepLog) Take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.buf.String()
	s.buf.Reset()
	return out
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("nodeguard-e2e", flag.ContinueOnError)
	webhookConfig := fs.String("webhook-config", "", "rendered manifests (kubectl kustomize deploy/) holding the ValidatingWebhookConfiguration")
	caFile := fs.String("ca", "", "PEM CA of nodeguard's serving certificate; becomes every webhook's caBundle")
	webhookPort := fs.Int("webhook-port", 0, "nodeguard's webhook port on 127.0.0.1 (where the webhook Service is sent)")
	kubeconfigOut := fs.String("kubeconfig-out", "", "kubeconfig to write, pointing at the harness's list/watch API")
	admin := fs.String("nodeguard-admin", "", "nodeguard's admin base URL, e.g. http://127.0.0.1:8080")
	ngLog := fs.String("nodeguard-log", "", "file for nodeguard's stdout and stderr")
	harnessLog := fs.String("harness-log", "", "file for the harness's own log (API requests, the plugin's klog); default: nodeguard-e2e.log next to --nodeguard-log")
	scenarios := fs.String("scenarios", "", "directory of scenario *.yaml files, run in name order")
	only := fs.String("only", "", "run only scenarios whose name or file name contains this")
	grace := fs.Duration("grace", 100*time.Millisecond, "pause after each store change, once its event is flushed to every watch")
	readyTimeout := fs.Duration("ready-timeout", 30*time.Second, "how long to wait for nodeguard's /readyz")
	verbose := fs.Bool("v", false, "print the details of passing steps too")
	ledgerMode := fs.String("ledger", "auto", "whether nodeguard keeps a NodeIdentity ledger the reset waits for: on, off, or auto (on when the NodeIdentity CRD is in the manifests or `nodeguard crd` prints it, or /metrics has "+gaugeLedgerRecs+")")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: nodeguard-e2e [flags] -- NODEGUARD-COMMAND...\n")
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
	switch {
	case *webhookConfig == "" || *caFile == "" || *webhookPort == 0 || *kubeconfigOut == "" || *admin == "" || *ngLog == "" || *scenarios == "":
		fs.Usage()
		return setupErr("--webhook-config, --ca, --webhook-port, --kubeconfig-out, --nodeguard-admin, --nodeguard-log and --scenarios are required")
	case len(argv) == 0:
		fs.Usage()
		return setupErr("the nodeguard command line is required after --")
	case *ledgerMode != "auto" && *ledgerMode != "on" && *ledgerMode != "off":
		return setupErr("--ledger %q is not auto, on or off", *ledgerMode)
	}
	if *harnessLog == "" {
		*harnessLog = filepath.Join(filepath.Dir(*ngLog), "nodeguard-e2e.log")
	}

	scs, err := LoadScenarios(*scenarios, *only)
	if err != nil {
		return setupErr("%v", err)
	}
	if len(scs) == 0 {
		return setupErr("no scenario in %s matches", *scenarios)
	}
	vwc, err := LoadWebhookConfig(*webhookConfig, *caFile)
	if err != nil {
		return setupErr("%v", err)
	}
	manifests, err := os.ReadFile(*webhookConfig)
	if err != nil {
		return setupErr("%v", err)
	}
	if err := AddManifestNamespaces(manifests); err != nil {
		return setupErr("%s: %v", *webhookConfig, err)
	}
	crd, err := LoadLedgerCRD(manifests, argv[0])
	if err != nil {
		return setupErr("%v", err)
	}

	hlog, err := os.OpenFile(*harnessLog, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return setupErr("%v", err)
	}
	defer hlog.Close()
	steplog := &stepLog{file: hlog}
	logger := log.New(hlog, "", log.LstdFlags|log.Lmicroseconds)
	kfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kfs)
	_ = kfs.Set("logtostderr", "false")
	_ = kfs.Set("alsologtostderr", "false")
	_ = kfs.Set("stderrthreshold", "FATAL")
	// Every severity goes to the INFO output as well; one writer avoids duplicates.
	klog.SetOutputBySeverity("INFO", steplog)

	store := NewStore()
	store.logf = logger.Printf
	api, err := StartAPIServer(store, logger)
	if err != nil {
		return setupErr("starting the API server: %v", err)
	}
	defer api.Close()
	if err := api.WriteKubeconfig(*kubeconfigOut, serviceAccountToken); err != nil {
		return setupErr("%v", err)
	}
	adminKubeconfig := *kubeconfigOut + ".admin"
	if err := api.WriteKubeconfig(adminKubeconfig, adminToken); err != nil {
		return setupErr("%v", err)
	}
	rbac, err := LoadRBAC(manifests)
	if err != nil {
		return setupErr("%s: %v", *webhookConfig, err)
	}
	if rbac != nil {
		api.SetRBAC(rbac)
		logger.Printf("RBAC: %s is nodeguard's ServiceAccount", rbac.ServiceAccount().GetName())
	} else {
		logger.Printf("RBAC: no Deployment in the manifests; requests are not authorized")
	}
	logger.Printf("API server on %s; kubeconfig %s (nodeguard's ServiceAccount), %s (an administrator)", api.URL(), *kubeconfigOut, adminKubeconfig)

	ng, err := NewNodeguard(argv, *admin, *ngLog)
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
	adm, err := NewAdmission(vwc, *webhookPort)
	if err != nil {
		return setupErr("setting up the admission plugin: %v", err)
	}
	defer adm.Close()
	ca, err := newClusterCA()
	if err != nil {
		return setupErr("%v", err)
	}
	r := &Runner{store: store, adm: adm, ng: ng, keys: NewKeys(), ca: ca, clock: &clock{}, grace: *grace,
		readyWait: *readyTimeout, kubeconfig: adminKubeconfig}
	switch {
	case crd.found:
		logger.Printf("NodeIdentity CRD from %s; status subresource: %v", crd.origin, crd.status)
		if crd.origin != "the manifests" {
			fmt.Fprintf(os.Stderr, "nodeguard-e2e: note: the NodeIdentity CustomResourceDefinition is not in %s; a cluster would answer 404 for nodeidentities. Serving it as %s defines it.\n", *webhookConfig, crd.origin)
		}
	default:
		logger.Printf("no NodeIdentity CRD in the manifests or from `nodeguard crd`; serving nodeidentities without a status subresource")
	}
	switch *ledgerMode {
	case "on":
		r.ledger = true
	case "off":
		r.noLedger = "the ledger is off (--ledger off)"
	default:
		m, _ := ng.Metrics()
		_, gauge := m[gaugeLedgerRecs]
		r.ledger = crd.found || gauge
		r.noLedger = "nodeguard has no ledger: no NodeIdentity CRD in the manifests or from `nodeguard crd`, and no " + gaugeLedgerRecs + " in /metrics (--ledger auto)"
	}
	if !r.ledger {
		fmt.Fprintf(os.Stderr, "nodeguard-e2e: note: %s; the reset does not wait for NodeIdentities, and ledger steps fail\n", r.noLedger)
	}
	logger.Printf("ledger: %v", r.ledger)

	passed, failed := 0, 0
	started := time.Now()
	for _, sc := range scs {
		logger.Printf("===== scenario %s (%s)", sc.Name, sc.file)
		steplog.Take()
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
			steplog.Take()
			api.TakeUnserved() // those of the reset or an earlier step are in the summary
			logOffset := ng.LogSize()
			wasRunning := ng.Running()
			res := r.Run(st)
			for _, u := range api.TakeUnserved() {
				res.Info = append(res.Info, "unserved API request: "+u)
			}
			if wasRunning && st.Nodeguard != "stop" && !ng.Running() {
				res.Pass = false
				res.Details = append(res.Details, fmt.Sprintf("nodeguard exited during this step: %v", ng.exitErr))
			}
			klogLines := steplog.Take()
			verdict := "PASS"
			if res.Pass {
				passed++
			} else {
				verdict = "FAIL"
				failed++
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
				if k := strings.TrimSpace(klogLines); k != "" {
					fmt.Println("    admission plugin log:")
					fmt.Println(indent(k, "    | "))
				}
				if l := ng.LogSince(logOffset, 4000); l != "" {
					fmt.Println("    nodeguard log:")
					fmt.Println(indent(l, "    | "))
				}
			}
		}
	}
	logger.Printf("done in %s", time.Since(started))
	if err := ng.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "nodeguard-e2e: %v\n", err)
	}
	if u := api.UnservedSummary(); len(u) > 0 {
		fmt.Println("API requests the harness does not serve (404) or RBAC forbids (403):")
		fmt.Println(indent(strings.Join(u, "\n"), "    "))
	}
	if failed > 0 {
		fmt.Printf("logs: nodeguard %s, harness %s\n", *ngLog, *harnessLog)
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}
