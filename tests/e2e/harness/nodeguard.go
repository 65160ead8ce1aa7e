package main

// `nodeguard serve` as a child process: start, wait for /readyz, stop with SIGTERM;
// and its /metrics, read for request counts and inventory sizes.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type Nodeguard struct {
	argv    []string
	binary  string // for other commands than serve
	admin   string // http://127.0.0.1:PORT
	logPath string
	log     *os.File
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	client  *http.Client
}

func NewNodeguard(argv []string, binary, admin, logPath string) (*Nodeguard, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &Nodeguard{
		argv: argv, binary: binary, admin: strings.TrimRight(admin, "/"), logPath: logPath, log: f,
		client: &http.Client{Timeout: 2 * time.Second},
	}, nil
}

func (n *Nodeguard) Running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// LogSize is the current size of the log file, to show what a step added to it.
func (n *Nodeguard) LogSize() int64 {
	st, err := os.Stat(n.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogSince returns the log written since offset (at most max bytes, the last ones).
func (n *Nodeguard) LogSince(offset int64, max int64) string {
	f, err := os.Open(n.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() <= offset {
		return ""
	}
	if st.Size()-offset > max {
		offset = st.Size() - max
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Start runs nodeguard and waits until /readyz answers 200.
func (n *Nodeguard) Start(timeout time.Duration) error {
	if n.Running() {
		return nil
	}
	fmt.Fprintf(n.log, "----- nodeguard-e2e: starting %s\n", strings.Join(n.argv, " "))
	cmd := exec.Command(n.argv[0], n.argv[1:]...)
	cmd.Stdout = n.log
	cmd.Stderr = n.log
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	// Never outlive the harness, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting nodeguard: %v", err)
	}
	n.cmd = cmd
	n.exited = make(chan struct{})
	go func() {
		n.exitErr = cmd.Wait()
		close(n.exited)
	}()
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-n.exited:
			return fmt.Errorf("nodeguard exited before it was ready: %v (log: %s)", n.exitErr, n.logPath)
		default:
		}
		resp, err := n.client.Get(n.admin + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodeguard's %s/readyz did not answer 200 within %s (log: %s)", n.admin, timeout, n.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits (SIGKILL after 15 s).
func (n *Nodeguard) Stop() error {
	if !n.Running() {
		return nil
	}
	fmt.Fprintf(n.log, "----- nodeguard-e2e: stopping nodeguard (SIGTERM)\n")
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
		return fmt.Errorf("nodeguard did not stop within 15 s of SIGTERM; killed")
	}
	fmt.Fprintf(n.log, "----- nodeguard-e2e: nodeguard exited: %v\n", n.exitErr)
	return nil
}

func (n *Nodeguard) Close() {
	_ = n.Stop()
	n.log.Close()
}

// Metrics scrapes /metrics into name -> sum of its samples (labels ignored).
func (n *Nodeguard) Metrics() (map[string]float64, error) {
	resp, err := n.client.Get(n.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return parseMetrics(string(b)), nil
}

// RequestsTotal is the sum of nodeguard_admission_requests_total over all labels;
// -1 when nodeguard is not running or does not answer.
func (n *Nodeguard) RequestsTotal() float64 {
	if !n.Running() {
		return -1
	}
	m, err := n.Metrics()
	if err != nil {
		return -1
	}
	return m["nodeguard_admission_requests_total"]
}

// WaitInventory waits until nodeguard's inventory gauges equal the expected counts.
func (n *Nodeguard) WaitInventory(nodes, bindings int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		m, err := n.Metrics()
		if err == nil {
			gn, okN := m["nodeguard_inventory_nodes"]
			gb, okB := m["nodeguard_inventory_key_bindings"]
			if !okN || !okB {
				last = "nodeguard_inventory_nodes or nodeguard_inventory_key_bindings missing from /metrics"
			} else if int(gn) == nodes && int(gb) == bindings {
				return nil
			} else {
				last = fmt.Sprintf("nodeguard_inventory_nodes %v, nodeguard_inventory_key_bindings %v", gn, gb)
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodeguard's inventory did not reach %d nodes and %d key bindings within %s: %s", nodes, bindings, timeout, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// parseMetrics sums each metric's samples over their labels.
func parseMetrics(text string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		webhook := ""
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndex(rest, "}")
			if j < 0 {
				continue
			}
			if k := strings.Index(rest[:j], `webhook="`); k >= 0 {
				w := rest[k+len(`webhook="`) : j]
				webhook = w[:strings.IndexByte(w+`"`, '"')]
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] += v
			if webhook != "" {
				// Also per webhook: name{webhook="pods"}.
				out[name+`{webhook="`+webhook+`"}`] += v
			}
		}
	}
	return out
}
