// Command oci-image writes an OCI image layout holding one image: an empty base, the layer
// tarball given, and the config `make image` asks for. It is e2e/image.sh's daemonless
// `docker build`: no daemon, no base image pulled, and the OCI structures (digests, media
// types, index) come from go-containerregistry rather than being written by hand.
//
//	oci-image -layer rootfs.tar -out DIR -ref 0.1.0 -created 2026-01-01T00:00:00Z \
//	    -user 65532:65532 -entrypoint /usr/local/bin/hyperpage -cmd operator \
//	    -port 8080/tcp -port 9090/tcp -label org.opencontainers.image.version=0.1.0
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "oci-image:", err)
		os.Exit(1)
	}
}

func run() error {
	var layer, out, ref, created, user, entrypoint, arch string
	var cmd, ports, labels list
	flag.StringVar(&layer, "layer", "", "uncompressed layer tarball (the whole root filesystem)")
	flag.StringVar(&out, "out", "", "directory to write the OCI image layout to (must not exist)")
	flag.StringVar(&ref, "ref", "", "org.opencontainers.image.ref.name of the image in the layout's index")
	flag.StringVar(&created, "created", "", "creation time (RFC 3339), fixed for reproducible output")
	flag.StringVar(&user, "user", "", "config User")
	flag.StringVar(&entrypoint, "entrypoint", "", "config Entrypoint (one element)")
	flag.StringVar(&arch, "arch", runtime.GOARCH, "config architecture")
	flag.Var(&cmd, "cmd", "config Cmd element (repeatable)")
	flag.Var(&ports, "port", "exposed port, e.g. 8080/tcp (repeatable)")
	flag.Var(&labels, "label", "config label KEY=VALUE (repeatable)")
	flag.Parse()
	if layer == "" || out == "" || ref == "" || created == "" {
		return fmt.Errorf("-layer, -out, -ref and -created are required")
	}
	when, err := time.Parse(time.RFC3339, created)
	if err != nil {
		return fmt.Errorf("failed to parse -created: %w", err)
	}
	if _, err := os.Stat(out); err == nil {
		return fmt.Errorf("%s exists", out)
	}

	// gzip at the default level: deterministic for the same input.
	l, err := tarball.LayerFromFile(layer, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("failed to read the layer: %w", err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: l, MediaType: types.OCILayer, History: v1.History{
		Created: v1.Time{Time: when}, CreatedBy: "e2e/image.sh", Comment: "the root filesystem: binary, its shared libraries, CA bundle, passwd",
	}})
	if err != nil {
		return fmt.Errorf("failed to append the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", arch, v1.Time{Time: when}
	cf.Config.User = user
	if entrypoint != "" {
		cf.Config.Entrypoint = []string{entrypoint}
	}
	cf.Config.Cmd = cmd
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.ExposedPorts = map[string]struct{}{}
	for _, p := range ports {
		cf.Config.ExposedPorts[p] = struct{}{}
	}
	cf.Config.Labels = map[string]string{}
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("label %q is not KEY=VALUE", kv)
		}
		cf.Config.Labels[k] = v
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	// The labels again as manifest annotations, where registries and `crane manifest` show them.
	img = mutate.Annotations(img, cf.Config.Labels).(v1.Image)

	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return fmt.Errorf("failed to create the layout: %w", err)
	}
	platform := v1.Platform{OS: "linux", Architecture: arch}
	if err := p.AppendImage(img, layout.WithPlatform(platform), layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return fmt.Errorf("failed to write the image: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Println(digest)
	return nil
}
