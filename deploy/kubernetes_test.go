package deploy_test

// kubernetes/*.yaml: the workloads that run the image.

import (
	"fmt"
	"testing"
	"time"
)

// TestKubernetes checks the workloads that run mqttgw: unique instance ids
// per replica and a termination grace period that covers the drain.
func TestKubernetes(t *testing.T) {
	ps := loadPrograms(t)
	gateways := 0
	for _, p := range podSpecs(loadYAML(t)) {
		for _, c := range p.containers() {
			if prog, _ := ps.program(c.argv); prog != ps.gateway {
				continue
			}
			gateways++
			_, args := ps.program(c.argv)
			if id, ok := flagValue(args, "instance-id"); ok && p.replicas > 1 {
				t.Errorf("%s: --instance-id %q is the same in all %d replicas", c.where, id, p.replicas)
			}
			if id := c.env["MQTTGW_INSTANCE_ID"]; id != "" && p.replicas > 1 {
				t.Errorf("%s: MQTTGW_INSTANCE_ID %q is the same in all %d replicas: take it from metadata.name", c.where, id, p.replicas)
			}

			grace, err := ps.duration(t, c, "shutdown-grace")
			if err != nil {
				t.Error(err)
				continue
			}
			delay, err := ps.duration(t, c, "shutdown-delay")
			if err != nil {
				t.Error(err)
				continue
			}
			term := 30 * time.Second // Kubernetes' default
			if v, ok := p.spec["terminationGracePeriodSeconds"].(int); ok {
				term = time.Duration(v) * time.Second
			}
			if term <= delay+grace {
				t.Errorf("%s: terminationGracePeriodSeconds %v is not above --shutdown-delay %v + --shutdown-grace %v", c.where, term, delay, grace)
			}
		}
	}
	if gateways == 0 {
		t.Error("no Kubernetes workload runs mqttgw")
	}
}

// podSpec is a Kubernetes workload's pod spec, with its replica count.
type podSpec struct {
	file, kind, name string
	replicas         int
	spec             map[string]any
}

func podSpecs(files []yamlFile) []podSpec {
	var out []podSpec
	for _, f := range files {
		for _, doc := range f.docs {
			kind := str(doc["kind"])
			spec := mapOf(doc["spec"])
			p := podSpec{file: f.path, kind: kind, name: str(mapOf(doc["metadata"])["name"]), replicas: 1}
			switch kind {
			case "Pod":
				p.spec = spec
			case "Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job":
				p.spec = mapOf(mapOf(spec["template"])["spec"])
				if r, ok := spec["replicas"].(int); ok {
					p.replicas = r
				}
				if kind == "DaemonSet" {
					p.replicas = 2 // one per node: always several
				}
			case "CronJob":
				p.spec = mapOf(mapOf(mapOf(mapOf(spec["jobTemplate"])["spec"])["template"])["spec"])
			default:
				continue
			}
			out = append(out, p)
		}
	}
	return out
}

// containers are a pod's commands: each container's command line and
// exec probes, with its environment.
func (p podSpec) containers() []command {
	var out []command
	for _, key := range []string{"initContainers", "containers"} {
		for _, c := range listOf(p.spec[key]) {
			c := mapOf(c)
			where := fmt.Sprintf("%s: %s %s, container %s", p.file, p.kind, p.name, str(c["name"]))
			env := envOf(c["env"])
			argv := argvOf(c["command"])
			if len(argv) == 0 && isOurImage(str(c["image"]), nil) {
				argv = []string{"/mqttgw"}
			}
			argv = append(argv, argvOf(c["args"])...)
			out = append(out, command{where: where, argv: argv, env: env})
			for _, probe := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
				if exec := mapOf(mapOf(c[probe])["exec"]); exec != nil {
					out = append(out, command{where: where + " " + probe, argv: argvOf(exec["command"]), env: env})
				}
			}
		}
	}
	return out
}
