// A pure Go program (CGO_ENABLED=0): no C library, no malloc; its heap grows by mappings.
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
	// Go exits through exit_group, not the C library's exit(): lingering lets a drain read
	// its memory map.
	time.Sleep(300 * time.Millisecond)
}
