//! Empty library target: lets `tracer` name this crate as a build dependency, so cargo rebuilds
//! the eBPF object when it changes. The programs are in the `tracer` binary target.
#![no_std]
