package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// manifests decodes every document of deploy/kubernetes/*.yaml strictly
// into the k8s.io/api type of its kind: a field the API does not have, or
// a value of the wrong type, fails. This is what kubeconform would check
// against the OpenAPI schemas, which cannot be downloaded here.
type manifests struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	secrets     map[string]*corev1.Secret
	files       map[string]bool
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{secrets: map[string]*corev1.Secret{}, files: map[string]bool{}}
	for _, path := range glob(t, "deploy/kubernetes/*.yaml") {
		name := filepath.Base(path)
		m.files[name] = true
		if name == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSep.Split(string(b), -1) {
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s document %d: %v", name, i, err)
			}
			if head.Kind == "" {
				if strings.TrimSpace(stripComments(doc)) != "" {
					t.Errorf("%s document %d: no kind", name, i)
				}
				continue
			}
			var obj any
			switch head.APIVersion + " " + head.Kind {
			case "apps/v1 Deployment":
				d := &appsv1.Deployment{}
				m.deployments, obj = append(m.deployments, d), d
			case "v1 Service":
				s := &corev1.Service{}
				m.services, obj = append(m.services, s), s
			case "v1 Secret":
				obj = &corev1.Secret{}
			case "v1 Namespace":
				obj = &corev1.Namespace{}
			default:
				t.Errorf("%s document %d: %s %s: add its type to this test", name, i, head.APIVersion, head.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s document %d (%s): %v", name, i, head.Kind, err)
			}
			if s, ok := obj.(*corev1.Secret); ok {
				m.secrets[s.Name] = s
			}
		}
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	if len(m.deployments) < 4 || len(m.services) < 4 {
		t.Fatalf("found %d Deployments and %d Services, want proxy, lb, agent, memcached", len(m.deployments), len(m.services))
	}
	for _, want := range []string{"reverse-http-cluster-key", "reverse-http-proxy-tls", "reverse-http-ca"} {
		if m.secrets[want] == nil {
			t.Errorf("secrets.example.yaml: no Secret %s", want)
		}
	}
	if k := m.secrets["reverse-http-cluster-key"]; k != nil && len(k.StringData["cluster.key"]) >= 16 {
		t.Error("the example cluster key is 16 bytes or more: the proxies would accept it; keep it a placeholder they refuse")
	}
	roles := map[string]bool{}
	for _, d := range m.deployments {
		t.Run(d.Name, func(t *testing.T) {
			checkDeployment(t, m, d, roles)
		})
	}
	for _, role := range []string{"proxy", "lb", "agent"} {
		if !roles[role] {
			t.Errorf("no Deployment runs reverse-http %s", role)
		}
	}
	for _, s := range m.services {
		t.Run("service "+s.Name, func(t *testing.T) {
			checkService(t, m, s)
		})
	}
}

func checkDeployment(t *testing.T, m *manifests, d *appsv1.Deployment, roles map[string]bool) {
	if d.Namespace != "reverse-http" {
		t.Errorf("namespace %q", d.Namespace)
	}
	sel, err := metav1LabelSelector(d)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod labels %v (%v)", d.Spec.Selector, d.Spec.Template.Labels, err)
	}
	pod := d.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", psc)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext: want seccompProfile RuntimeDefault")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
		if v.Secret != nil && m.secrets[v.Secret.SecretName] == nil {
			t.Errorf("volume %s: Secret %s is not in secrets.example.yaml", v.Name, v.Secret.SecretName)
		}
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("container %s: securityContext must set readOnlyRootFilesystem, allowPrivilegeEscalation: false, drop ALL", c.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s: want cpu and memory requests and a memory limit", c.Name)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("container %s: want readiness and liveness probes", c.Name)
		}
		ports := map[string]corev1.ContainerPort{}
		for _, p := range c.Ports {
			ports[p.Name] = p
		}
		for _, vm := range c.VolumeMounts {
			if _, ok := volumes[vm.Name]; !ok {
				t.Errorf("container %s: mount of unknown volume %s", c.Name, vm.Name)
			}
		}
		if c.Image != "reverse-http:latest" {
			continue
		}
		// A reverse-http container: its flags, ports and probes.
		checkArgs(t, "container "+c.Name, c.Args)
		if len(c.Args) == 0 {
			continue
		}
		role := c.Args[0]
		roles[role] = true
		admin := ""
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--admin.listen-address="); ok {
				admin = v[strings.LastIndex(v, ":")+1:]
			}
		}
		if admin == "" {
			t.Errorf("container %s: no --admin.listen-address, which serves the probes' /healthz and /readyz", c.Name)
		}
		if p, ok := ports["admin"]; !ok || itoa(p.ContainerPort) != admin {
			t.Errorf("container %s: port \"admin\" %+v is not --admin.listen-address's port %s", c.Name, p, admin)
		}
		// Liveness: the process answers (/healthz); readiness: it can do
		// its job (/readyz). Liveness on /readyz would restart every pod
		// when memcached or the proxy is down.
		for _, pc := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
			p := pc.probe
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != pc.path || p.HTTPGet.Port != intstr.FromString("admin") {
				t.Errorf("container %s: %s probe %+v, want GET %s on port admin", c.Name, pc.name, p, pc.path)
			}
		}
		listen := map[string]string{"proxy": "http-proxy.listen-address", "lb": "http-proxy.listen-address"}
		if f, ok := listen[role]; ok {
			port := listenPort(t, role, f, c.Args)
			if p, ok := ports["clients"]; !ok || itoa(p.ContainerPort) != port || p.Protocol != corev1.ProtocolTCP {
				t.Errorf("container %s: port \"clients\" %+v, want %s/TCP (--%s)", c.Name, p, port, f)
			}
		}
		if role == "proxy" {
			port := listenPort(t, role, "agent-server.listen-address", c.Args)
			if p, ok := ports["agents"]; !ok || itoa(p.ContainerPort) != port || p.Protocol != corev1.ProtocolUDP {
				t.Errorf("container %s: port \"agents\" %+v, want %s/UDP", c.Name, p, port)
			}
		}
	}
}

// listenPort is the port a listen-address flag sets in args, or its default.
func listenPort(t *testing.T, role, flag string, args []string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
			return v[strings.LastIndex(v, ":")+1:]
		}
	}
	return defaultPort(t, role, flag)
}

func checkService(t *testing.T, m *manifests, s *corev1.Service) {
	var pods []corev1.PodTemplateSpec
	for _, d := range m.deployments {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
			pods = append(pods, d.Spec.Template)
		}
	}
	if len(pods) == 0 {
		t.Fatalf("selector %v matches no Deployment", s.Spec.Selector)
	}
	for _, sp := range s.Spec.Ports {
		for _, pod := range pods {
			found := false
			for _, c := range pod.Spec.Containers {
				for _, cp := range c.Ports {
					found = found || (cp.Name == sp.TargetPort.String() && cp.Protocol == sp.Protocol)
				}
			}
			if !found {
				t.Errorf("port %s: targetPort %s/%s is no container port of %v", sp.Name, sp.TargetPort.String(), sp.Protocol, pod.Labels)
			}
		}
	}
}

func metav1LabelSelector(d *appsv1.Deployment) (labels.Selector, error) {
	if d.Spec.Selector == nil {
		return labels.Nothing(), nil
	}
	return labels.SelectorFromSet(d.Spec.Selector.MatchLabels), nil
}

func itoa(i int32) string { return strconv.Itoa(int(i)) }

// TestKustomization checks that kustomization.yaml lists every manifest
// but the secrets example, and only files that exist.
func TestKustomization(t *testing.T) {
	m := loadManifests(t)
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/kubernetes/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag,omitempty"`
		} `json:"images"`
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		listed[r] = true
		if !m.files[r] {
			t.Errorf("resource %s does not exist", r)
		}
	}
	for f := range m.files {
		if f != "kustomization.yaml" && f != "secrets.example.yaml" && !listed[f] {
			t.Errorf("%s is not in kustomization.yaml's resources", f)
		}
	}
	if listed["secrets.example.yaml"] {
		t.Error("secrets.example.yaml must not be applied as it is")
	}
}
