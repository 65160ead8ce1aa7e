package main

// The API server's audit log (tests/e2e/audit-policy.yaml: every kubelet write), read
// to tell which of two machines sharing one node's credentials wrote what: the log
// names the source address, which no admission webhook is shown.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

type auditEvent struct {
	Stage string `json:"stage"`
	Verb  string `json:"verb"`
	User  struct {
		Username string              `json:"username"`
		Extra    map[string][]string `json:"extra"`
	} `json:"user"`
	SourceIPs []string `json:"sourceIPs"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"responseStatus"`
	StageTimestamp time.Time `json:"stageTimestamp"`
	// The objects, for the writes the policy keeps whole.
	ResponseObject json.RawMessage `json:"responseObject"`
}

func (e auditEvent) resource() string {
	r := e.ObjectRef.Resource
	if e.ObjectRef.Subresource != "" {
		r += "/" + e.ObjectRef.Subresource
	}
	return e.Verb + " " + r
}

func (e auditEvent) from(ip string) bool {
	for _, s := range e.SourceIPs {
		if s == ip {
			return true
		}
	}
	return false
}

// readAudit returns the completed requests of the audit log.
func readAudit(path string) ([]auditEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []auditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		var e auditEvent
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Stage == "ResponseComplete" {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// writeCounts counts, per verb and resource, the writes from ip in [from, to) that the
// API server accepted and those it refused.
type writeCounts map[string]*[2]int

func countWrites(events []auditEvent, ip string, from, to time.Time) writeCounts {
	out := writeCounts{}
	for _, e := range events {
		if !e.from(ip) || e.StageTimestamp.Before(from) || !e.StageTimestamp.Before(to) {
			continue
		}
		c, ok := out[e.resource()]
		if !ok {
			c = &[2]int{}
			out[e.resource()] = c
		}
		if e.ResponseStatus.Code < 400 {
			c[0]++
		} else {
			c[1]++
		}
	}
	return out
}

func (w writeCounts) accepted(resource string) int {
	if c, ok := w[resource]; ok {
		return c[0]
	}
	return 0
}

func (w writeCounts) String() string {
	if len(w) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d accepted, %d refused", k, w[k][0], w[k][1]))
	}
	return strings.Join(parts, "; ")
}
