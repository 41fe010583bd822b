//! The state machines that keep a gateway from making failures worse: a circuit breaker,
//! a retry budget, jittered exponential backoff, a bulkhead, and GCRA rate limiting.
//!
//! They are written here, by hand, because they are the heart of what Levee promises: each
//! is a small, synchronous value that takes the current time as an argument, so it can be
//! tested exhaustively on tokio's paused clock. The breaker and the budget are shared by every
//! worker thread of the process without locks (atomic state changed by compare-and-swap,
//! counters sharded so each thread writes its own cache lines: see [`window`]), so the
//! evidence a config names counts wherever it was seen. None of them touch the network.
//!
//! Why each exists, in one line: retries turn a transient failure into a success, the budget
//! stops retries from multiplying load on an upstream that is already failing (a retry storm),
//! backoff with full jitter spreads the retries that do happen (in AWS's 2015 analysis it
//! did as well as the best alternative, with the simplest code), and the breaker stops sending
//! to a target that keeps failing so clients fail fast instead of waiting on it.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod gcra;
pub mod window;

pub use backoff::full_jitter;
pub use breaker::{BreakerConfig, CircuitBreaker, Permit, State};
pub use budget::RetryBudget;
pub use bulkhead::{Bulkhead, BulkheadPermit};
pub use gcra::{Decision, KeyedLimiter, Quota};
