// Command usage-healthcheck is the container health check of every
// service image: the runtime image has no shell, curl or wget, so this
// static binary GETs a service's health URL and exits 0 on a 2xx answer
// within the timeout, 1 otherwise.
//
//	usage-healthcheck http://127.0.0.1:9464/healthz
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: usage-healthcheck URL")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-healthcheck:", err)
		return 2
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-healthcheck:", err)
		return 1
	}
	_ = res.Body.Close()
	if res.StatusCode/100 != 2 {
		fmt.Fprintln(os.Stderr, "usage-healthcheck:", args[0], res.Status)
		return 1
	}
	return 0
}
