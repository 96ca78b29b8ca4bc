// The payload of the podman test's image: one static binary, so that the image needs
// nothing else.  It prints the IPv4 addresses of its network namespace, then waits until
// it is stopped.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	addresses, err := net.InterfaceAddrs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, address := range addresses {
		if ip, ok := address.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			fmt.Println(ip.String())
		}
	}
	if len(os.Args) > 1 && os.Args[1] == "wait" {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	}
}
