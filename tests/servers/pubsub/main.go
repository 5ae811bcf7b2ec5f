// Command pstest runs Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/v2/pstest)
// as a standalone gRPC server for PUBSUB_EMULATOR_HOST. State lives in memory only.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8085, "port to listen on")
	streamTimeout := flag.Duration("stream-timeout", 0, "close each StreamingPull after this long (0 = never)")
	flag.Parse()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	defer func() { // pstest panics when it cannot listen: report that as one line
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stderr, "pubsub test server:", r)
			os.Exit(1)
		}
	}()
	srv := pstest.NewServerWithAddress(fmt.Sprintf("%s:%d", *host, *port))
	srv.SetStreamTimeout(*streamTimeout)
	fmt.Fprintf(os.Stdout, "pubsub test server listening on %s\n", srv.Addr) // unbuffered: flushed
	<-stop
	done := make(chan error, 1)
	go func() { done <- srv.Close() }()
	select { // Close waits for open streams; do not hang on a stuck client
	case <-done:
	case <-time.After(5 * time.Second):
	}
}
