//! End-to-end tests: the release tracer attached with real uprobes to victims whose truth is
//! known exactly. Run as root (scripts/test); see tracer_tests::privileged for skipping rules.
mod allocators;
mod attach;
mod cli;
mod flame;
mod follow;
mod launch;
mod live;
mod lost;
mod maps;
mod metrics;
mod reach;
mod safety;
mod sampled;
mod stacks;
mod system;
mod workflow;
