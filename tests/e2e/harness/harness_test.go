package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// Every shipped scenario loads (strictly: an unknown key is an error), so a typo fails
// here rather than after a cluster came up.
func TestShippedScenariosLoad(t *testing.T) {
	scs, err := LoadScenarios("../scenarios", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(scs) < 18 {
		t.Fatalf("loaded %d scenarios, want at least 18", len(scs))
	}
	for _, sc := range scs {
		for _, st := range sc.Steps {
			if id := identityOf(&st); st.admitted() && id.User == "" {
				t.Errorf("%s / %s: no user to act as", sc.Name, st.title())
			}
		}
	}
}

func TestAnUnknownKeyIsAnError(t *testing.T) {
	_, err := loadScenario("x.yaml", []byte("name: x\nsteps:\n  - nodeguard: stop\n    expext: {}\n"))
	if err == nil || !strings.Contains(err.Error(), "expext") {
		t.Fatalf("got %v, want an error naming the unknown key", err)
	}
}

// A status change is sent as the kubelet sends it: only what changed, with the order
// of the conditions list, and nothing of the spec.
func TestStatusPatchIsTheKubeletsTwoWayMerge(t *testing.T) {
	spec := NodeSpec{Name: "worker-1", MachineID: "11c1f8e2fbf5540cd8ff218ef016ba11",
		SystemUUID: "1139a350-3cd4-400f-875d-c270379811b0", BootID: "11a0427b-40ea-4cf5-9f24-53d6e200ef11", InternalIP: "10.0.0.11"}
	c := &clock{}
	old := buildNode(spec, c.Now())
	node := old.DeepCopy()
	node.Status.NodeInfo.BootID = "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60"
	now := c.Now()
	for i := range node.Status.Conditions {
		node.Status.Conditions[i].LastHeartbeatTime = now
	}
	patch, err := twoWayPatch(old, node)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]map[string]interface{}
	if err := json.Unmarshal(patch, &got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got["spec"]; ok || got["metadata"] != nil {
		t.Errorf("patch %s touches more than status", patch)
	}
	status := got["status"]
	if status["nodeInfo"].(map[string]interface{})["bootID"] != "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60" {
		t.Errorf("patch %s lacks the new boot id", patch)
	}
	if _, ok := status["$setElementOrder/conditions"]; !ok {
		t.Errorf("patch %s lacks $setElementOrder/conditions", patch)
	}
	if _, ok := status["addresses"]; ok {
		t.Errorf("patch %s sends addresses that did not change", patch)
	}
}

func TestIdentitiesGetTheirKindsGroups(t *testing.T) {
	for _, tc := range []struct {
		id   Identity
		want string
	}{
		{Identity{User: "system:node:worker-1"}, "system:nodes"},
		{Identity{User: "kubernetes-admin"}, "kubeadm:cluster-admins"},
		{Identity{User: "system:node:ip-10-0-10-170.ec2.internal", Groups: []string{"system:bootstrappers", "system:nodes", "system:authenticated"}}, "system:bootstrappers,system:nodes"},
	} {
		if got := strings.Join(certGroups(tc.id), ","); got != tc.want {
			t.Errorf("%s: groups %q, want %q", tc.id, got, tc.want)
		}
	}
}

func TestForbiddenLinesFindRefusedRequests(t *testing.T) {
	log := "INFO listed nodes\nWARN nodeguard::ledger: ApiError: nodeidentities.nodeguard.io is forbidden: User cannot patch\nINFO ok\n"
	if got := forbiddenLines(log); len(got) != 1 || !strings.Contains(got[0], "forbidden") {
		t.Fatalf("got %q", got)
	}
	if got := forbiddenLines("INFO all fine\n"); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
}
