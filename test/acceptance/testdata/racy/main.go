// Command racy has a data race on purpose: built with -race, it makes the
// race detector write a report (TestGuestRaceReportsReachTheHost).
package main

import "fmt"

var counter int

func main() {
	done := make(chan struct{})
	go func() {
		counter++ // unsynchronised with the write below
		close(done)
	}()
	counter++
	<-done
	fmt.Println("racy: counter", counter)
}
