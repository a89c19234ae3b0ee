package deploy

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// TestComposeFiles loads each compose file with compose-go, the loader of
// docker compose, which validates it against the Compose Specification's
// schema offline, and checks what it runs.
func TestComposeFiles(t *testing.T) {
	files := glob(t, "deploy/*/docker-compose*.yml")
	if len(files) < 2 {
		t.Fatalf("want the standalone and HA compose files, found %q", files)
	}
	for _, file := range files {
		t.Run(rel(file), func(t *testing.T) {
			content, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
				WorkingDir:  filepath.Dir(file),
				ConfigFiles: []types.ConfigFile{{Filename: file, Content: content}},
				Environment: types.Mapping{},
			}, func(o *loader.Options) { o.SkipResolveEnvironment = true })
			if err != nil {
				t.Fatalf("compose-go: %v", err)
			}
			built := 0
			for name, svc := range project.Services {
				if svc.Image != "reverse-http:local" {
					continue
				}
				// Every reverse-http service is built from the Dockerfile
				// at the repository root.
				if svc.Build == nil {
					t.Errorf("service %s: image reverse-http:local without build", name)
				} else if svc.Build.Context != repoRoot {
					t.Errorf("service %s: build context %s, want the repository root", name, svc.Build.Context)
				} else if _, err := os.Stat(filepath.Join(svc.Build.Context, "Dockerfile")); err != nil {
					t.Errorf("service %s: %v", name, err)
				}
				built++
				checkArgs(t, "service "+name, svc.Command)
				for _, v := range svc.Volumes {
					if v.Type == types.VolumeTypeBind {
						if _, err := os.Stat(v.Source); err != nil {
							t.Errorf("service %s: bind mount: %v", name, err)
						}
					}
				}
			}
			if built < 3 {
				t.Errorf("found %d reverse-http services, want certs, a proxy and an agent at least", built)
			}
		})
	}
}
