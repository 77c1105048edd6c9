// pause: the sandbox ("infra") container of every pod on the local real node.
//
// It holds the pod's namespaces open, reaps zombies (it is PID 1 when the pod
// shares its PID namespace) and exits 0 on SIGINT or SIGTERM. Built statically
// from this file by hack/images.sh, because no registry with the upstream pause
// image is reachable.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
