// A runtime client for the tests, in the shape of the CNI project's cnitool, built against
// the libcni source that Debian ships (the cnitool binary itself is not packaged):
//
//	cnitool (add|check|del) NETWORK NETNS
//	cnitool gc NETWORK CONTAINERID/IFNAME...
//
// The network list is read from NETCONFPATH, plugins are found on CNI_PATH, the interface
// name is CNI_IFNAME (default eth0), results are cached under CNI_CACHE_DIR.  As cnitool
// does, the container id is derived from the netns path.  libcni 1.1 has no GC, so "gc"
// execs the network's IPAM plugin through libcni's invoke package with the IPAM plugin's
// configuration at cniVersion 1.1.0 and cni.dev/valid-attachments, as libcni 1.2 sends it.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
)

func fail(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "cnitool: %v\n", err)
		os.Exit(1)
	}
}

func containerID(netns string) string {
	sum := sha512.Sum512([]byte(netns))
	return fmt.Sprintf("cnitool-%x", sum[:10])
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: cnitool (add|check|del) NETWORK NETNS | gc NETWORK CONTAINERID/IFNAME...")
		os.Exit(2)
	}
	command, name := os.Args[1], os.Args[2]
	netDir := os.Getenv("NETCONFPATH")
	if netDir == "" {
		netDir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadConfList(netDir, name)
	fail(err)
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	cni := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	if command == "gc" {
		fail(gc(ctx, list, paths, os.Args[3:]))
		return
	}
	netns, err := filepath.Abs(os.Args[3])
	fail(err)
	ifname := os.Getenv("CNI_IFNAME")
	if ifname == "" {
		ifname = "eth0"
	}
	rt := &libcni.RuntimeConf{ContainerID: containerID(netns), NetNS: netns, IfName: ifname}
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		fail(err)
		fail(result.Print())
	case "check":
		fail(cni.CheckNetworkList(ctx, list, rt))
	case "del":
		fail(cni.DelNetworkList(ctx, list, rt))
	default:
		fail(fmt.Errorf("unknown command %q", command))
	}
}

func gc(ctx context.Context, list *libcni.NetworkConfigList, paths []string, valid []string) error {
	attachments := []map[string]string{}
	for _, pair := range valid {
		parts := strings.SplitN(pair, "/", 2)
		if len(parts) != 2 {
			return fmt.Errorf("attachment %q is not CONTAINERID/IFNAME", pair)
		}
		attachments = append(attachments, map[string]string{"containerID": parts[0], "ifname": parts[1]})
	}
	for _, plugin := range list.Plugins {
		var conf map[string]interface{}
		if err := json.Unmarshal(plugin.Bytes, &conf); err != nil {
			return err
		}
		ipam, ok := conf["ipam"].(map[string]interface{})
		if !ok {
			continue
		}
		kind, _ := ipam["type"].(string)
		stdin, err := json.Marshal(map[string]interface{}{
			"cniVersion":                "1.1.0",
			"name":                      list.Name,
			"ipam":                      ipam,
			"cni.dev/valid-attachments": attachments,
		})
		if err != nil {
			return err
		}
		exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}
		path, err := exec.FindInPath(kind, paths)
		if err != nil {
			return err
		}
		args := &invoke.Args{Command: "GC", ContainerID: "", NetNS: "", IfName: "", Path: strings.Join(paths, ":")}
		if err := invoke.ExecPluginWithoutResult(ctx, path, stdin, args, exec); err != nil {
			return err
		}
	}
	return nil
}
