// A pure Go program (CGO_ENABLED=0): no C library, no malloc.
package main

import (
	"fmt"
	"time"
)

var keep [][]byte

func main() {
	for i := 0; i < 20; i++ {
		keep = append(keep, make([]byte, 1024))
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println(len(keep))
}
