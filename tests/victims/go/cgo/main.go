// A Go program with cgo: N blocks of 72 bytes leak through C's malloc, called from a Go
// function; the Go heap itself is not traced.
package main

// #include <stdlib.h>
import "C"

import (
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"
)

var keep []unsafe.Pointer

//go:noinline
func leakC(n int) {
	for i := 0; i < n; i++ {
		keep = append(keep, C.malloc(72))
	}
}

func main() {
	n := 30
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	leakC(n)
	fmt.Printf("TRUTH leakC LEAK blocks=%d bytes=%d\n", n, n*72)
	// Go exits through exit_group, not the C library's exit(): tracer cannot hold it there
	// to read its memory map, so it lingers long enough for a drain to.
	time.Sleep(300 * time.Millisecond)
}
